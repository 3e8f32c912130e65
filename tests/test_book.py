"""The experiment book (experiments/README.md) against the committed results it is
generated from: experiments/book.py --check, in process."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_book():
    spec = importlib.util.spec_from_file_location("_test_book", ROOT / "experiments" / "book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


book = _load_book()

# A demo section for the machinery's own tests.
DEMO = "| a | b |\n| --- | --- |\n| 1 | 2 |"
DEMO_README = f"""# Title

Prose before, with a number 0.5 that is not generated.

<!-- book:demo/table -->

{DEMO}

<!-- /book -->

Prose after: 0.7.
"""


@pytest.fixture
def demo(monkeypatch):
    """Only the demo section registered."""
    monkeypatch.setattr(book, "SECTIONS", {"demo": lambda: {"table": DEMO}})


@pytest.fixture
def blocks_only(monkeypatch):
    """The real sections, without their derived files (so nothing in the repository is
    rewritten by a test)."""
    sections = dict(book.SECTIONS)
    for name, make in sections.items():
        sections[name] = lambda make=make: {k: v for k, v in make().items() if isinstance(k, str)}
    monkeypatch.setattr(book, "SECTIONS", sections)


def test_the_book_equals_what_book_py_generates():
    started = time.perf_counter()
    problems = book.check()
    assert not problems, "\n\n".join(problems) + "\n\nrun `make book` and review the diff"
    assert book.blocks(book.README.read_text()), "the README has no generated blocks"
    assert time.perf_counter() - started < 5


def test_a_tampered_number_is_detected_and_named(tmp_path, blocks_only, capsys):
    text = book.README.read_text()
    start, end = book.blocks(text)["robust/compression"]
    body = text[start:end]
    assert "| 0.591 [0.579, 0.604] |" in body
    copy = tmp_path / "README.md"
    copy.write_text(text[:start] + body.replace("0.591 [0.579", "0.593 [0.579", 1) + text[end:])
    problems = book.check(copy)
    assert len(problems) == 1 and "block robust/compression differs" in problems[0]
    assert "0.593 [0.579" in problems[0] and "0.591 [0.579" in problems[0]
    assert book.main(["--check", "--readme", str(copy)]) == 1
    assert "robust/compression" in capsys.readouterr().err
    # Rewriting restores the committed README exactly.
    assert book.write(copy) == ["robust/compression"]
    assert copy.read_text() == text
    assert book.main(["--check", "--readme", str(copy)]) == 0


def test_text_outside_the_markers_is_never_modified(tmp_path, demo):
    stale = DEMO_README.replace("| 1 | 2 |", "| 1 | 3 |")
    edited = stale.replace("Prose after: 0.7.", "Prose after: 0.9, edited by hand.")
    copy = tmp_path / "README.md"
    copy.write_text(edited)
    assert [p.splitlines()[0] for p in book.check(copy)] == [
        "README.md: block demo/table differs from what experiments/results/ gives"
    ]
    assert book.write(copy) == ["demo/table"]
    assert copy.read_text() == DEMO_README.replace(
        "Prose after: 0.7.", "Prose after: 0.9, edited by hand."
    )
    assert book.check(copy) == [] and book.write(copy) == []


def test_a_derived_file_is_checked_and_rewritten(tmp_path, monkeypatch):
    derived = tmp_path / "tables.md"
    derived.write_text("stale\n")
    monkeypatch.setattr(book, "SECTIONS", {"demo": lambda: {"table": DEMO, derived: "full\n"}})
    copy = tmp_path / "README.md"
    copy.write_text(DEMO_README)
    assert len(book.check(copy)) == 1 and "tables.md differs" in book.check(copy)[0]
    assert book.write(copy) == [str(derived)]
    assert derived.read_text() == "full\n" and copy.read_text() == DEMO_README


@pytest.mark.parametrize(
    "text, error",
    [
        (DEMO_README.replace("demo/table", "demo/other"), "no registered section makes"),
        (DEMO_README.replace("<!-- book:demo/table -->", ""), "without an opening marker"),
        (DEMO_README.replace("<!-- /book -->", ""), "is not closed"),
        (DEMO_README + DEMO_README, "appears twice"),
        ("# No markers\n", "have no <!-- book:NAME --> ... <!-- /book --> in the README"),
    ],
)
def test_markers_that_do_not_fit_the_sections_are_errors(tmp_path, demo, text, error):
    copy = tmp_path / "README.md"
    copy.write_text(text)
    with pytest.raises(book.BookError, match=re.escape(error)):
        book.check(copy)
    assert book.main(["--check", "--readme", str(copy)]) == 2
    assert copy.read_text() == text
