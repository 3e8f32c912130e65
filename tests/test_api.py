"""The Python API as a script uses it: the __main__ guard, predictions, the config."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from conftest import small_run

import fastdist

SNIPPET = """
import fastdist
{guard}
    result = fastdist.train({overrides!r}, workers=2, progress="off")
    print("accuracy", result.metrics["test_accuracy"])
"""


def _script(tmp_path, guard: bool):
    body = SNIPPET.format(
        guard='if __name__ == "__main__":' if guard else "if True:",
        overrides=small_run(),
    )
    path = tmp_path / "snippet.py"
    path.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_the_snippet_runs_as_a_script_with_the_guard(tmp_path):
    proc = _script(tmp_path, guard=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("accuracy 0.")


def test_without_the_guard_one_line_says_why(tmp_path):
    proc = _script(tmp_path, guard=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr


def test_the_result_predicts_with_the_combined_model():
    result = fastdist.train(small_run("combiner=ensemble", "workers=2"))
    data = fastdist.load_dataset(fastdist.compose(small_run()).dataset)
    probs = result.predict_proba(data.x_test)
    assert probs.shape == (len(data.y_test), data.n_classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    predicted = result.predict(data.x_test)
    np.testing.assert_array_equal(predicted, probs.argmax(axis=1))
    assert (predicted == data.y_test).mean() == result.metrics["test_accuracy"]
    assert len(result.combined.members) == 2


def test_the_typed_config_is_importable():
    from fastdist import FastdistConfig, HistoryConfig

    assert FastdistConfig().history == HistoryConfig()
    assert FastdistConfig().workers == 2
