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
from fastdist.run.config_checks import default_max_workers

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
    # Non-finite numbers, negative or zero limits and intervals, quoted numbers, and
    # worker counts no machine could hold.
    st.tuples(
        st.sampled_from(["optimizer.lr", "optimizer.momentum", "validation_fraction"]),
        st.sampled_from(["inf", "-inf", "nan"]),
    ),
    st.tuples(st.sampled_from(["max_workers", "max_respawns"]), negative),
    st.tuples(st.just("history.every"), non_positive),
    st.tuples(
        st.sampled_from(["optimizer.lr", "seed", "batch_size", "workers", "epochs"]),
        st.integers(1, 99).map(lambda n: f"'{n}'"),
    ),
    st.tuples(st.just("workers"), st.integers(10**6, 10**30).map(str)),
)

# A swept key whose values are all valid but one (which may be any of the bad ones).
valid_sweep_values = {
    "optimizer.lr": ["0.05", "0.1"],
    "seed": ["0", "1"],
    "batch_size": ["8", "16"],
    "history.every": ["5", "10"],
}


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


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(sorted(valid_sweep_values)),
    bad=invalid_override,
    where=st.integers(0, 2),
)
def test_a_sweep_with_one_bad_job_trains_nothing(tmp_path, monkeypatch, key, bad, where):
    from fastdist.engine.pool import WorkerPool

    def refuse(self):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(WorkerPool, "start", refuse)
    good = valid_sweep_values[key]
    bad_key, bad_value = bad
    if bad_key == key:  # the bad value is one of the swept key's values
        values = [*good[:where], bad_value, *good[where:]]
        args = [f"{key}={','.join(values)}"]
    else:  # or the bad override applies to every job
        args = [f"{key}={','.join(good)}", f"{bad_key}={bad_value}"]
    code, err = run_cli(["-m", *args, f"hydra.sweep.dir={tmp_path}/sweep"])
    assert code == 2, (args, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastdist: error: "), (args, err)
    assert not list(tmp_path.rglob("metrics.json")), args
