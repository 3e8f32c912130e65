"""Compiled and reference kernels of the built-in models."""
