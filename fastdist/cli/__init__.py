"""The command-line tools: fastdist, fastdist-combine, fastdist-summarize, fastdist-clean."""
