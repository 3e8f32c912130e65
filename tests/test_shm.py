"""SharedArena: layout, zero-copy attach, ownership and unlinking."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

from fastdist.engine.shm import SEGMENT_PREFIX, SharedArena, list_segments


def _arrays():
    return {"a": ((3, 5), np.float32), "b": ((7,), np.int32), "c": ((2, 2), np.float64)}


def test_arrays_are_aligned_zeroed_views_of_one_segment():
    with SharedArena.create(_arrays()) as arena:
        assert arena.name.startswith(f"{SEGMENT_PREFIX}{os.getpid()}-")
        assert arena.name in list_segments()
        for key, (shape, dtype) in _arrays().items():
            view = arena[key]
            assert view.shape == shape and view.dtype == dtype
            assert view.ctypes.data % 64 == 0
            assert not view.any()
        arena["a"][:] = 1.5
        assert not arena["b"].any()  # no overlap between arrays
    assert arena.name not in list_segments()


def _write_through_attach(spec, value):
    arena = SharedArena.attach(spec)
    arena["a"][:] = value
    arena.close()


def test_a_worker_writes_in_place_and_its_exit_does_not_unlink():
    with SharedArena.create(_arrays()) as arena:
        proc = mp.get_context("spawn").Process(target=_write_through_attach, args=(arena.spec, 4.0))
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        np.testing.assert_array_equal(arena["a"], np.full((3, 5), 4.0, np.float32))
        # bpo-39959: the attaching process must not have unlinked the owner's segment
        assert arena.name in list_segments()


def test_close_is_idempotent_and_unlinks_even_with_live_views():
    arena = SharedArena.create(_arrays())
    view = arena["a"]  # a caller still holding a view must not keep the name alive
    arena.close()
    arena.close()
    assert arena.name not in list_segments()
    del view


def test_unlinked_on_exception():
    with pytest.raises(RuntimeError), SharedArena.create(_arrays()) as arena:
        raise RuntimeError("boom")
    assert arena.name not in list_segments()


def test_a_run_first_removes_segments_of_dead_owners_only():
    import subprocess
    import sys

    import fastdist
    from fastdist.engine.cleanup import stale_segments

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = f"{SEGMENT_PREFIX}{int(dead.stdout)}-deadbeef"
    with open(f"/dev/shm/{stale}", "wb") as fh:
        fh.write(b"\0" * 64)
    with open(f"/dev/shm/{stale}.lock", "wb"):
        pass  # its owner's lock file, which nobody holds any more
    with SharedArena.create(_arrays()) as live:
        assert stale_segments() == [stale]
        fastdist.train(
            fastdist.compose(
                [
                    "dataset=synthetic",
                    "dataset.n_train=128",
                    "dataset.n_test=32",
                    "dataset.n_features=4",
                    "model.hidden=[4]",
                    "batch_size=8",
                    "steps=2",
                    "workers=1",
                ]
            )
        )
        assert stale not in list_segments()
        assert live.name in list_segments()
