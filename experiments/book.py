"""The experiment book, experiments/README.md, regenerated from committed results.

    python experiments/book.py           # rewrite every generated block (make book)
    python experiments/book.py --check   # exit 1, naming every block that differs
                                         # (make book-check; tests/test_book.py)

A generated block is the text between two marker lines of README.md::

    <!-- book:robust/attacks -->
    ...
    <!-- /book -->

Nothing outside the markers is ever touched. The text comes from committed files under
experiments/results/ (a per-run CSV, a tuning.json): never from run directories, and
nothing is re-run, so it works on a clean clone.

Adding a section is one registration: a function decorated with ``@section("name")``
that reads the committed files and returns ``{"block": markdown}``; each key is then
the README block ``<!-- book:name/block -->``. A key that is a :class:`~pathlib.Path`
instead names a whole derived file (e.g. results/robust/tables.md), rewritten and
checked like a block. Every block a section returns must have its markers in the README,
and every marker must belong to a registered section.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
# The experiment scripts import their shared helpers (records.py) from beside them.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
README = HERE / "README.md"
OPEN, CLOSE = "<!-- book:", " -->"
END = "<!-- /book -->"

Generated = dict[str | Path, str]
SECTIONS: dict[str, Callable[[], Generated]] = {}


def section(name: str) -> Callable[[Callable[[], Generated]], Callable[[], Generated]]:
    """Register ``make`` as section ``name``: its ``{"block": markdown}`` fill the
    README's ``<!-- book:name/block -->`` blocks (a Path key: a whole derived file)."""

    def register(make: Callable[[], Generated]) -> Callable[[], Generated]:
        SECTIONS[name] = make
        return make

    return register


def experiment(name: str) -> ModuleType:
    """experiments/<name>.py as a module (the experiment scripts are not a package)."""
    key = f"_book_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# ------------------------------------------------------------------ the sections


@section("recipes")
def recipes() -> Generated:
    """The published-results table and sections 5 and 6, from results/recipes/
    (fastdist-tune's tuning.json per recipe, fixed_runs.csv for the paper's recipe)."""
    return experiment("recipes").book_tables()


@section("ablation")
def ablation() -> Generated:
    """Sections 1 and 2, from results/ablation/runs.csv and tuning.csv: the combiner
    tables per dataset (equal epochs and equal steps) and the initialisation table."""
    return experiment("ablation").book_tables()


@section("federated")
def federated() -> Generated:
    """Section 7 and the published-results table's federated rows, from
    results/federated/runs.csv and tuning.csv."""
    return experiment("federated").book_tables()


@section("throughput")
def throughput() -> Generated:
    """Section 4, from results/throughput/runs.csv."""
    return experiment("throughput").book_tables()


@section("robust")
def robust() -> Generated:
    """Section 8, from results/robust/runs.csv: the README's worst-attack and compression
    tables, and the full tables.md and chosen.json beside the CSV."""
    module = experiment("robust")
    runs = module.load_runs()
    return {
        **module.book_tables(runs),
        module.OUT / "tables.md": module.tables_md(runs),
        module.OUT / "chosen.json": module.chosen_json(runs),
    }


@section("merging")
def merging() -> Generated:
    """Section 9, from results/merging/runs.csv and tuning.csv: the README's tuning,
    soup, barrier and class-subset tables, and tables.md and chosen.json beside them."""
    module = experiment("merging")
    runs, tuning = module.load_runs(), module.load_tuning()
    return {
        **module.book_tables(runs, tuning),
        module.OUT / "tables.md": module.tables_md(runs, tuning),
        module.OUT / "chosen.json": module.chosen_json(tuning),
    }


# ------------------------------------------------------------------ the machinery


class BookError(Exception):
    """The README's markers and the registered sections do not fit together."""


def blocks(text: str) -> dict[str, tuple[int, int]]:
    """Each generated block's name -> (start, end) of the text between its markers."""
    found: dict[str, tuple[int, int]] = {}
    name, start, offset = None, 0, 0
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        stripped = line.strip()
        if stripped.startswith(OPEN) and stripped.endswith(CLOSE):
            if name is not None:
                raise BookError(f"line {number}: block {name!r} is not closed by {END}")
            name, start = stripped[len(OPEN) : -len(CLOSE)].strip(), offset + len(line)
            if name in found:
                raise BookError(f"line {number}: block {name!r} appears twice")
        elif stripped == END:
            if name is None:
                raise BookError(f"line {number}: {END} without an opening marker")
            found[name], name = (start, offset), None
        offset += len(line)
    if name is not None:
        raise BookError(f"block {name!r} is not closed by {END}")
    return found


def generate() -> tuple[dict[str, str], dict[Path, str]]:
    """Every registered section's blocks (by full name) and derived files."""
    made: dict[str, str] = {}
    files: dict[Path, str] = {}
    for name, make in SECTIONS.items():
        try:
            outputs = make()
        except Exception as error:  # a missing or malformed committed file, most likely
            raise BookError(f"section {name!r} failed: {error!r}") from error
        for key, text in outputs.items():
            if isinstance(key, Path):
                files[key] = text
            else:
                made[f"{name}/{key}"] = f"\n{text.strip(chr(10))}\n\n"
    return made, files


def render(text: str, made: dict[str, str]) -> str:
    """``text`` with every block's body replaced by ``made``'s; the rest as it was."""
    found = blocks(text)
    unknown = sorted(set(found) - set(made))
    if unknown:
        raise BookError(f"no registered section makes block(s) {', '.join(unknown)}")
    unplaced = sorted(set(made) - set(found))
    if unplaced:
        raise BookError(
            f"block(s) {', '.join(unplaced)} have no {OPEN}NAME{CLOSE} ... {END} in the README"
        )
    for name, (start, end) in sorted(found.items(), key=lambda item: -item[1][0]):
        text = text[:start] + made[name] + text[end:]
    return text


def _diff(old: str, new: str, label: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(),
        new.splitlines(),
        f"{label} (committed)",
        f"{label} (generated)",
        n=0,
        lineterm="",
    )
    return "\n".join(list(lines)[:40])


def check(readme: Path = README) -> list[str]:
    """What differs from what the committed results give: one message (and diff) per
    block or derived file; empty when the book is up to date."""
    made, files = generate()
    text = readme.read_text()
    render(text, made)  # a marker without a section, or a block without markers: an error
    found = blocks(text)
    problems = []
    for name, body in made.items():
        start, end = found[name]
        if text[start:end] != body:
            problems.append(
                f"{readme.name}: block {name} differs from what experiments/results/ gives\n"
                + _diff(text[start:end], body, name)
            )
    for path, body in files.items():
        old = path.read_text() if path.exists() else ""
        if old != body:
            label = str(path.relative_to(HERE)) if path.is_relative_to(HERE) else str(path)
            problems.append(
                f"{label} differs from what its section gives\n{_diff(old, body, label)}"
            )
    return problems


def write(readme: Path = README) -> list[str]:
    """Rewrite the README's blocks and the derived files; the names of those changed."""
    made, files = generate()
    text = readme.read_text()
    new = render(text, made)
    found = blocks(text)
    changed = [name for name in made if text[slice(*found[name])] != made[name]]
    if new != text:
        readme.write_text(new)
    for path, body in files.items():
        if not path.exists() or path.read_text() != body:
            path.write_text(body)
            changed.append(str(path.relative_to(HERE)) if path.is_relative_to(HERE) else str(path))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.readme)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(
                    "the book is stale: run `make book` (python experiments/book.py)",
                    file=sys.stderr,
                )
                return 1
            print(f"the book is up to date ({len(blocks(args.readme.read_text()))} blocks)")
            return 0
        changed = write(args.readme)
    except BookError as error:
        print(f"book.py: error: {args.readme}: {error}", file=sys.stderr)
        return 2
    print(f"rewrote: {', '.join(changed)}" if changed else "nothing to rewrite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
