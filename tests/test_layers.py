"""The package's shape: layers import only downwards, and architecture details stay in
the model records."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastdist"


def test_the_layer_contract_holds():
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if linter is None:
        pytest.skip("import-linter is not installed")
    proc = subprocess.run([linter], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "0 broken" in proc.stdout


def test_only_the_model_records_know_an_architectures_settings():
    """A model's options (the MLP's hidden widths) are read by its record alone."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "models" not in path.relative_to(PACKAGE).parts
        and re.search(r"\bhidden\b", path.read_text())
    ]
    assert offenders == []
