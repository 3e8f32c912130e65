"""Generated invalid configurations always end in one line on stderr and exit code 2:
never a traceback, never a hang, never a started worker."""

from __future__ import annotations

import contextlib
import io
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdist.cli.main import main
from fastdist.conf import registered
from fastdist.run.config import default_max_workers

KNOWN_COMBINERS = set(registered("combiner"))  # every shipped preset
words = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
non_positive = st.integers(max_value=0).map(str)
negative = st.integers(max_value=-1).map(str)

invalid_override = st.one_of(
    st.tuples(st.just("workers"), non_positive | words),
    st.tuples(st.just("seed"), negative | words | st.integers(2**32, 10**30).map(str)),
    st.tuples(st.just("workers"), st.integers(default_max_workers() + 1, 10**6).map(str)),
    st.tuples(st.just("worker_timeout"), non_positive),
    st.tuples(st.just("batch_size"), non_positive | st.integers(2000, 10**7).map(str)),
    st.tuples(st.just("epochs"), non_positive),
    st.tuples(st.just("steps"), non_positive),
    st.tuples(st.just("backend.threads"), non_positive),
    st.tuples(
        st.just("model.hidden"),
        st.lists(st.integers(-5, 0), min_size=1, max_size=3).map(
            lambda xs: "[" + ",".join(map(str, xs)) + "]"
        ),
    ),
    st.tuples(
        st.just("optimizer.lr"),
        st.floats(max_value=0, allow_nan=False, allow_infinity=False).map(repr),
    ),
    st.tuples(st.just("optimizer.momentum"), st.floats(1.0, 1e6).map(repr) | words),
    st.tuples(st.just("validation_fraction"), st.floats(1.0, 10.0).map(repr)),
    st.tuples(st.just("checkpoint.every"), non_positive),
    st.tuples(st.just("combiner"), words.filter(lambda w: w not in KNOWN_COMBINERS)),
    st.tuples(st.just("backend"), words.filter(lambda w: w not in {"numba", "jax", "reference"})),
    st.tuples(words.map(lambda w: f"no_such_{w}"), st.integers().map(str)),
)


def run_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["fastdist", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    return code, err.getvalue()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(overrides=st.lists(invalid_override, min_size=1, max_size=3, unique_by=lambda kv: kv[0]))
def test_invalid_configs_are_one_line_and_exit_2(tmp_path, overrides):
    args = [f"{key}={value}" for key, value in overrides]
    code, err = run_cli([*args, f"hydra.run.dir={tmp_path}/run"])
    assert code == 2, (args, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastdist: error: "), (args, err)
    assert "Traceback" not in err
