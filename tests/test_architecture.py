"""The shape of the code base: stage order between packages, no cycles, small modules and functions.

Issue #13's acceptance, kept true by the test suite rather than by a one-off review:

* packages are ranked in the order data flows through them (:data:`RANK`); no module imports
  from a later rank, lazily or not;
* the import graph between modules has no cycle;
* no module of ``pipeline/`` or ``flows/`` is over 500 lines, and no function over 60.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Packages in the order data flows through them: grid -> read -> infer -> stitch -> vectorize ->
#: write -> describe -> run. ``config`` is the boundary everything may read; the writers of
#: ``io`` take vectorize's values, so they rank after it (they are the "write" stage).
RANK = {
    "core": 0,
    "config": 1,
    "tiling": 2,
    "io": 3,
    "model": 4,
    "vectorize": 5,
    "io.write": 6,
    "io.vectors": 6,
    "describe": 7,
    "run": 8,
    "training": 9,
    "evaluation": 10,
    "cli": 11,
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _rank(module: str) -> int | None:
    parts = module.split(".")[1:]
    for depth in (2, 1):
        key = ".".join(parts[:depth])
        if len(parts) >= depth and key in RANK:
            return RANK[key]
    return None


def _imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """``(line, module)`` for every pipeline module that ``path`` imports, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for alias in node.names:  # ``from pipeline.x import y``: y may be a module
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if sub in known else node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("pipeline.")]
    return sorted({(line, name) for line, name in found if name in known and name != "pipeline"})


def test_no_import_from_a_later_stage() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        mine = _rank(name)
        for line, other in _imports(path, set(modules)):
            theirs = _rank(other)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {other}")
    assert not wrong, "imports from a later stage:\n" + "\n".join(wrong)


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(RANK), f"packages without a place in RANK: {sorted(packages - set(RANK))}"


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {
        name: {o for _, o in _imports(path, set(modules)) if o != name and not name.startswith(o + ".")}
        for name, path in modules.items()
    }  # a package's own __init__ is not an edge
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def _sources() -> list[Path]:
    return sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "flows").rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: over {MAX_MODULE_LINES} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The rank and cycle checks see lazy imports and ``from package import module``."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from pipeline.run import scene\n    import pipeline.core.errors\n")
    known = {"pipeline.run.scene", "pipeline.run", "pipeline.core.errors"}
    assert _imports(src, known) == [(2, "pipeline.run.scene"), (3, "pipeline.core.errors")]
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()
    assert (_rank("pipeline.io.write"), _rank("pipeline.io.read"), _rank("pipeline.config")) == (6, 3, 1)
