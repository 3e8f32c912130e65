"""Property-based fuzz over untrusted files (hypothesis): data files of every source
and run directories for ``fastdist-combine``. Over 1000 generated cases, in-process so
they fit in CI time; each must end either in a valid result or in a one-line
ConfigError (exit 2) -- never another exception, a traceback, a hang or a leak (the
autouse check), and nothing written outside the run directory."""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import saved_run_dir, small_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from fastdist.cli import combine as combine_cli
from fastdist.data.base import check_dataset
from fastdist.data.datasets import load_dataset
from fastdist.errors import ConfigError
from fastdist.run.states import STATES_FILE

pytestmark = pytest.mark.slow


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


DTYPES = ["uint8", "int8", "int32", "int64", "float16", "float32", "float64", "bool", "U3"]
specials = st.sampled_from([0, 1, 9, 10, 255, 256, -1, 1e9, 2**32 + 3, np.nan, np.inf, -np.inf])


@st.composite
def arrays(draw, rows=None):
    n = draw(st.integers(0, 12)) if rows is None else rows
    shape = draw(st.sampled_from([(n,), (n, 0), (n, 3), (n, 2, 2), (n, 28, 28), (n, 40), ()]))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(specials)
    with np.errstate(all="ignore"):
        base = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 10, shape)
        a = base.astype(np.float64)
        if a.size and draw(st.booleans()):
            a.flat[draw(st.integers(0, a.size - 1))] = fill
        if dtype == "U3":
            return a.astype("U3")
        return (
            a.astype(dtype)
            if np.isfinite(a).all() or dtype.startswith("float")
            else base.astype(dtype)
        )


KEYS = ["x_train", "y_train", "x_test", "y_test", "seed"]


@st.composite
def npz_bytes(draw):
    keys = draw(st.lists(st.sampled_from(KEYS), unique=True, min_size=0, max_size=5))
    rows = draw(st.integers(0, 12))
    same = draw(st.booleans())
    content = {k: draw(arrays(rows if same else None)) for k in keys}
    buf = io.BytesIO()
    np.savez(buf, **content)
    raw = buf.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    if cut is not None:
        raw = raw[:cut]
    if raw and draw(st.booleans()):
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ 0x5A]) + raw[at + 1 :]
    return raw


@st.composite
def idx_bytes(draw, magic):
    dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=3))
    header_magic = draw(st.sampled_from([magic, magic ^ 1, 0]))
    n_dims = draw(st.sampled_from([len(dims), len(dims) + 1, 255]))
    head = struct.pack(">I", (header_magic & ~0xFF) | (n_dims & 0xFF))
    head += b"".join(struct.pack(">I", d) for d in dims)
    count = int(np.prod(dims)) if dims else 0
    body = bytes(
        draw(st.integers(0, 255)) for _ in range(min(count + draw(st.integers(-2, 2)), 64))
    )
    return (
        (head + body)[: draw(st.integers(0, len(head) + len(body)))]
        if draw(st.booleans())
        else head + body
    )


def _expect_valid_or_config_error(cfg):
    try:
        data = load_dataset(OmegaConf.create(cfg))
    except ConfigError as exc:
        assert "\n" not in str(exc).strip()
        return
    check_dataset(data, "fuzz")  # what came back is what training may use


@fuzz(450)
@given(raw=npz_bytes(), source=st.sampled_from(["mnist", "mnist1d"]))
def test_fuzzed_npz_files(tmp_path, raw, source):
    path = tmp_path / "data.npz"
    path.write_bytes(raw)
    if source == "mnist":
        _expect_valid_or_config_error({"name": "mnist", "path": str(path)})
    else:
        # A cache that cannot be read regenerates (the real generator: slow), so only
        # readable caches of the right shape reach the checks; stub the generator.
        import fastdist.data.mnist1d as mnist1d

        original = mnist1d._generate_mnist1d
        mnist1d._generate_mnist1d = lambda seed: (_ for _ in ()).throw(ConfigError("regen"))
        try:
            _expect_valid_or_config_error({"name": "mnist1d", "seed": 0, "path": str(path)})
        finally:
            mnist1d._generate_mnist1d = original


@fuzz(250)
@given(
    images=idx_bytes(0x00000803),
    labels=idx_bytes(0x00000801),
    test_images=idx_bytes(0x00000803),
    test_labels=idx_bytes(0x00000801),
)
def test_fuzzed_idx_files(tmp_path, images, labels, test_images, test_labels):
    root = tmp_path / "idx"
    root.mkdir(exist_ok=True)
    for stem, raw in [
        ("train-images-idx3-ubyte", images),
        ("train-labels-idx1-ubyte", labels),
        ("t10k-images-idx3-ubyte", test_images),
        ("t10k-labels-idx1-ubyte", test_labels),
    ]:
        (root / stem).write_bytes(raw)
    _expect_valid_or_config_error({"name": "mnist", "path": str(root)})


# -------------------------------------------------------------- run directories

TRAIN = small_run("workers=2", "steps=4", "combiner=weight_avg", "dataset.n_train=128")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return saved_run_dir(tmp_path_factory.mktemp("fuzzrun") / "run", TRAIN)


OVERRIDE_EDITS = st.sampled_from(
    [
        "seed=1",
        "seed=-1",
        "workers=3",
        "workers=0",
        "model.hidden=[4]",
        "model.hidden=[12]",
        "dataset.n_train=256",
        "dataset.n_test=0",
        "dataset.path=/etc",
        "hydra.run.dir=/",
        "dataset=mnist",
        "combiner=grad_avg",
        "+_target_=os.system",
        "validation_fraction=2",
        "batch_size=0",
        "optimizer.lr=nan",
        "model._target_=os.system",
        "=",
        "a b c",
    ]
)


@st.composite
def run_damage(draw):
    return {
        "states": draw(
            st.one_of(
                st.none(),
                st.just("delete"),
                npz_bytes(),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "worker_params": arrays(),
                        "samples_seen": arrays(),
                        "validation_fraction": arrays(),
                        "sync": st.sampled_from(
                            [np.str_("none"), np.str_("gradients"), np.int64(3)]
                        ),
                        "split_hash": st.sampled_from([np.str_("0" * 16), np.float64(1.0)]),
                    },
                ),
                st.integers(0, 4000),  # truncate at
            )
        ),
        "overrides": draw(
            st.one_of(
                st.none(),
                st.lists(OVERRIDE_EDITS, min_size=1, max_size=3),
                st.text(max_size=40),
                st.just("delete"),
            )
        ),
    }


def _apply(run: Path, damage: dict) -> None:
    states = run / STATES_FILE
    change = damage["states"]
    if change == "delete":
        states.unlink()
    elif isinstance(change, bytes):
        states.write_bytes(change)
    elif isinstance(change, int):
        states.write_bytes(states.read_bytes()[:change])
    elif isinstance(change, dict):
        with np.load(states) as data:
            content = {k: data[k] for k in data.files}
        content.update(change)
        np.savez(states, **content)
    overrides = run / ".hydra" / "overrides.yaml"
    edit = damage["overrides"]
    if edit == "delete":
        overrides.unlink()
    elif isinstance(edit, str):
        overrides.write_text(edit)
    elif isinstance(edit, list):
        items = yaml.safe_load(overrides.read_text())
        keys = {e.split("=", 1)[0] for e in edit}
        overrides.write_text(
            yaml.safe_dump([o for o in items if o.split("=", 1)[0] not in keys] + edit)
        )


@fuzz(320)
@given(damage=run_damage())
def test_fuzzed_run_directories(run_dir, tmp_path_factory, damage):
    root = tmp_path_factory.mktemp("case")
    run = root / "run"
    shutil.copytree(run_dir, run)
    _apply(run, damage)
    before = sorted(str(p) for p in root.rglob("*"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            combine_cli.main([str(run), "weight_avg"])
            code = 0
        except SystemExit as exc:
            code = exc.code
    text = err.getvalue()
    assert code in (0, 2), (damage, text)
    assert "Traceback" not in text and len(text.strip().splitlines()) == (code != 0), text
    after = sorted(str(p) for p in root.rglob("*"))
    new = set(after) - set(before)
    assert new <= {str(run / "combine_metrics.json")}, new
    if code == 0:
        assert (run / "combine_metrics.json").exists()
    shutil.rmtree(root)
