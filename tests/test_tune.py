"""fastdist-tune: the choice is made on the validation split of the tuning seeds, the
chosen setting is re-run on fresh seeds, and only those runs' test scores are read."""

from __future__ import annotations

import json

import pytest
from conftest import small_run

from fastdist.cli.tune import main, split_grid

GRID = [*small_run("steps=20", "combiner=weight_avg"), "optimizer.lr=0.0001,0.1"]


def test_the_choice_is_made_on_validation_and_scored_on_fresh_seeds(tmp_path, capsys):
    main([str(tmp_path), *GRID, "--tune-seeds", "100,101", "--seeds", "0,1"])
    record = json.loads((tmp_path / "tuning.json").read_text())
    assert record["budget_runs"] == 4
    assert "optimizer.lr=0.1" in record["chosen"]  # 0.0001 barely moves in 20 steps
    assert "validation_fraction=0.1" in record["chosen"]  # the final runs hold it out too
    by_point = {tuple(v["setting"]): v["mean"] for v in record["validation"]}
    assert by_point[("optimizer.lr=0.1",)] > by_point[("optimizer.lr=0.0001",)]
    assert set(record["test_accuracy"]["by_seed"]) == {"0", "1"}
    assert record["test_accuracy"]["n"] == 2
    finals = sorted((tmp_path / "final").glob("*/metrics.json"))
    seeds = {json.loads(p.read_text())["seed"] for p in finals}
    assert seeds == {0, 1}
    assert "Chosen: optimizer.lr=0.1" in capsys.readouterr().out
    # Complete stages are not run again: a second call only re-reads them.
    stamp = (tmp_path / "final" / "done").stat().st_mtime_ns
    main([str(tmp_path), *GRID, "--tune-seeds", "100,101", "--seeds", "0,1"])
    assert (tmp_path / "final" / "done").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tune-seeds", "0,1", "--seeds", "1,2"], "--seeds must be fresh"),
        (["seed=3", "--seeds", "1,2"], "leave seed and eval.every out"),
        (["--seeds", "1,1"], "distinct seeds"),
    ],
)
def test_bad_requests_are_one_line(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main([str(tmp_path), *GRID, *argv])


def test_split_grid_reads_commas_as_a_sweep_but_not_in_lists():
    fixed, grid = split_grid(["a=1", "b=2,3", "model.hidden=[4,5]"])
    assert fixed == ["a=1", "model.hidden=[4,5]"] and grid == {"b": ["2", "3"]}
