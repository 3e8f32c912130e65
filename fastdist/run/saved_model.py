"""Saved models: ``save_model=true`` writes the combined model, ``init_from=PATH``
starts every worker from one, ``fastdist.load(PATH)`` predicts with one.

The file (``model.npz``) is pickle-free and read through the one reader of untrusted
``.npz`` files (:func:`fastdist.data.npz.read_npz`): the members' parameter vectors,
their weights and how they are averaged (one member for an averaged model, several for
an ensemble), the model record's config as JSON text (its ``_target_`` and options), the
input shape and class count it was built for, the layout (each tensor's name and shape)
and a content hash over all of it. A file from someone else executes nothing: the config
is parsed as JSON (never YAML, never interpolated), only fastdist's own registered model
factories are built from it (a JAX model's factory must be named by the caller), every
array is checked, and the hash catches an edited or truncated file (it authenticates
nothing: whoever writes the file can recompute it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastdist.combiners.base import CombinedModel
from fastdist.combiners.evaluate import evaluate, predict_proba
from fastdist.data.npz import MissingArrays, NpzError, checker, read_npz
from fastdist.engine.files import replacing
from fastdist.errors import ConfigError
from fastdist.models.base import Model

__all__ = ["MODEL_FILE", "SavedModel", "load", "locate", "read_base", "save_model"]

MODEL_FILE = "model.npz"
_FORMAT = "fastdist-model-1"
_SCALARS = ("format", "model_config", "layout", "average", "content_hash")
_SHAPES = ("input_shape", "n_classes")
_MAX_MEMBERS = 4096  # an ensemble larger than this is not one fastdist wrote
_MAX_HEAD_BYTES = 16 << 20  # the config, layout and small fields: a few kB


def _digest(members, weights, texts: dict[str, str], input_shape, n_classes) -> str:
    h = hashlib.sha256()
    for array in (members, weights, np.asarray(input_shape, np.int64), np.int64(n_classes)):
        h.update(np.ascontiguousarray(array).tobytes())
    for key in sorted(texts):
        h.update(f"{key}={texts[key]}".encode())
    return h.hexdigest()


def save_model(path, combined: CombinedModel, model: Model, model_config: dict, input_shape):
    """Write ``combined`` (a run's combined model) to ``path`` (a directory: its
    ``model.npz``); returns the file's path."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    members = np.stack([np.asarray(m, np.float32) for m in combined.members])
    weights = np.asarray(combined.weights, np.float64)
    texts = {
        "format": _FORMAT,
        "model_config": json.dumps(model_config, sort_keys=True),
        "layout": json.dumps([[name, list(shape)] for name, shape in model.layout.shapes]),
        "average": combined.average,
    }
    shape = np.asarray(tuple(input_shape), np.int64)
    digest = _digest(members, weights, texts, shape, model.n_classes)
    arrays = {key: np.str_(value) for key, value in texts.items()}
    with replacing(path, suffix=".tmp.npz") as fh:
        np.savez(
            fh,
            members=members,
            weights=weights,
            input_shape=shape,
            n_classes=np.int64(model.n_classes),
            n_members=np.int64(len(members)),
            content_hash=np.str_(digest),
            **arrays,
        )
    return path


@dataclass(frozen=True)
class SavedModel:
    """A loaded model: ``predict_proba``, ``predict`` and ``evaluate`` on rows
    preprocessed like the dataset it was trained on (``input_shape`` per row)."""

    model: Model
    combined: CombinedModel
    input_shape: tuple[int, ...]
    config: dict

    def _rows(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return np.ascontiguousarray(x.reshape(len(x), -1))

    def predict_proba(self, x) -> np.ndarray:
        return predict_proba(self.combined, self.model, self._rows(x))

    def predict(self, x) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)

    def evaluate(self, x, y) -> dict:
        """``{"accuracy", "loss"}`` on rows ``x`` with labels ``y``."""
        return evaluate(self.combined, self.model, self._rows(x), np.asarray(y))


def load(path, factory: str | None = None) -> SavedModel:
    """The model saved at ``path`` (a ``model.npz`` or the run directory holding it).
    A JAX model's factory is code: pass it as ``factory="pkg.module:make"``."""
    path = _model_path(path)
    raw = _read(path)
    config = _config(path, raw, factory)
    shape = tuple(int(d) for d in raw["input_shape"])
    from fastdist.run.records import build_model

    model = build_model(config, shape, int(raw["n_classes"]), trusted=False)
    _check_layout(path, raw, model)
    members = tuple(raw["members"].astype(np.float32))
    combined = CombinedModel(members, tuple(map(float, raw["weights"])), str(raw["average"]))
    return SavedModel(model, combined, shape, config)


def read_base(path, model: Model) -> np.ndarray:
    """``init_from``: the one parameter vector saved at ``path``, checked against
    ``model`` (the run's): the same layout, or a one-line error naming both."""
    path = _model_path(path, "init_from")
    raw = _read(path, model)
    if raw["members"].shape[0] != 1:
        raise ConfigError(
            f"init_from={path}: an ensemble of {raw['members'].shape[0]} members has no "
            "single parameter vector to start from"
        )
    return raw["members"][0].astype(np.float32)


def locate(path, setting: str = "") -> Path:
    """The ``model.npz`` that ``path`` names (the file, or a run directory holding it),
    or a one-line error (``setting`` names the option in it)."""
    return _model_path(path, setting)


def _model_path(path, setting: str = "") -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        prefix = f"{setting}={path}: " if setting else f"{path}: "
        raise ConfigError(f"{prefix}no saved model there (train with save_model=true)")
    return path


def _read(path: Path, model: Model | None = None) -> dict:
    """The file's arrays, checked; with ``model``, its layout is compared with the
    file's before the parameter rows are read."""
    shapes = {key: () for key in (*_SCALARS, "n_classes", "n_members")}
    try:
        # Small fields first; then the rows, of the shape those declare, before a byte
        # of them is inflated (read_npz's shapes=).
        head = read_npz(
            path, (*_SCALARS, *_SHAPES, "n_members"), shapes=shapes, max_bytes=_MAX_HEAD_BYTES
        )
        count = head["n_members"]
        ok = count.dtype.kind == "i" and 1 <= int(count) <= _MAX_MEMBERS
        checker(f"{path}: ")(ok, f"n_members must be in [1, {_MAX_MEMBERS}]")
        if model is not None:
            _check_layout(path, head, model)
        size = model.layout.size if model is not None else _layout_size(path, head)
        expected = {"members": (int(count), size), "weights": (int(count),)}
        rows = read_npz(path, ("members", "weights"), shapes=expected)
    except MissingArrays as exc:
        raise ConfigError(f"{path}: not a saved model (missing {', '.join(exc.missing)})") from None
    except NpzError as exc:
        raise ConfigError(f"{path}: not a readable saved model ({exc.detail})") from None
    raw = {**head, **rows}
    _check(path, raw)
    return raw


def _layout_size(path: Path, head: dict) -> int:
    """The parameter count the file's layout declares (before its rows are read)."""
    layout = _json(path, head, "layout")
    ok = isinstance(layout, list) and all(
        isinstance(t, list) and len(t) == 2 and isinstance(t[1], list) for t in layout
    )
    checker(f"{path}: ")(ok, "layout is not a list of [name, shape]")
    try:
        return sum(int(np.prod([int(d) for d in shape])) for _, shape in layout)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: layout holds a shape that is not integers") from None


def _json(path: Path, raw: dict, key: str):
    text = raw[key]
    checker(f"{path}: ")(text.dtype.kind == "U", f"{key} is not text")
    try:
        return json.loads(str(text))
    except (ValueError, RecursionError):
        raise ConfigError(f"{path}: {key} is not valid JSON") from None


def _check(path: Path, raw: dict) -> None:
    need = checker(f"{path}: ")
    need(all(raw[k].dtype.kind == "U" for k in _SCALARS), "text fields are not text")
    need(str(raw["format"]) == _FORMAT, f"not a saved model of this fastdist ({raw['format']})")
    members, weights = raw["members"], raw["weights"]
    need(members.dtype.kind == "f" and weights.dtype.kind == "f", "arrays are not floats")
    need(bool(np.isfinite(members).all()), "the parameters are not finite")
    need(bool(np.isfinite(weights).all() and (weights >= 0).all()), "bad member weights")
    need(str(raw["average"]) in ("probs", "logits"), "average must be probs or logits")
    shape, classes = raw["input_shape"], raw["n_classes"]
    need(shape.ndim == 1 and shape.dtype.kind == "i" and (shape > 0).all(), "bad input_shape")
    need(classes.dtype.kind == "i" and int(classes) >= 2, "bad n_classes")
    texts = {key: str(raw[key]) for key in ("format", "model_config", "layout", "average")}
    digest = _digest(members, weights, texts, shape, int(classes))
    need(str(raw["content_hash"]) == digest, "its content hash does not match (edited or damaged)")


def _config(path: Path, raw: dict, factory: str | None) -> dict:
    config = _json(path, raw, "model_config")
    if not isinstance(config, dict) or not isinstance(config.get("_target_"), str):
        raise ConfigError(f"{path}: model_config names no model factory (_target_)")
    if config.get("factory"):  # a JAX model: code, imported only when the caller names it
        if factory is None:
            raise ConfigError(
                f"{path}: a JAX model's factory is code; name it yourself: "
                "fastdist.load(path, factory='package.module:make')"
            )
        config = {**config, "factory": factory}
    return config


def _check_layout(path: Path, raw: dict, model: Model) -> None:
    saved = [(str(n), tuple(s)) for n, s in _json(path, raw, "layout")]
    mine = [(name, tuple(shape)) for name, shape in model.layout.shapes]
    if saved != mine:
        diff = next((i for i, (a, b) in enumerate(zip(saved, mine)) if a != b), len(mine))
        ours = mine[diff] if diff < len(mine) else "(none)"
        theirs = saved[diff] if diff < len(saved) else "(none)"
        raise ConfigError(
            f"{path}: saved for another architecture: tensor {diff} is {theirs} there, "
            f"{ours} in this model ({len(saved)} vs {len(mine)} tensors)"
        )
