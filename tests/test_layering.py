"""The import direction of the package, read from the source (every import, also those inside
functions): the .beton format (`luab_data.beton`) sits below the writers, loaders and builds
that use it; the loaders never reach into the writers; and no luab_data modules import each
other in a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

PACKAGE = Path(__file__).resolve().parents[1] / "luab_data"
# what builds, writes, loads or runs commands: the format must not depend on any of it
ABOVE_THE_FORMAT = (
    "luab_data.loaders",
    "luab_data.writers",
    "luab_data.build",
    "luab_data.ingest",
    "luab_data.cli",
    "luab_data.verify",
    "luab_data.show",
    "luab_data.bench",
    "luab_data.recipes",
)


class Import(NamedTuple):
    source: str  # the importing module
    target: str  # the imported luab_data module (or package)
    where: str  # file:line


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _base(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module of a `from ... import` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def imports_of(name: str, path: Path) -> Iterator[Import]:
    """Every luab_data module `name` imports; `from pkg import mod` counts as the module."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, name, path)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                yield Import(name, target, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")


GRAPH = {name: list(imports_of(name, path)) for name, path in MODULES.items()}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def offending(sources: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{i.where}: {i.source} imports {i.target}"
        for name, found in GRAPH.items()
        if within(name, sources)
        for i in found
        if any(within(i.target, f) for f in forbidden)
    ]


def test_the_graph_is_read():
    assert "luab_data.beton.fields" in MODULES and "luab_data.writers.beton" in MODULES
    targets = {i.target for i in GRAPH["luab_data.writers.beton"]}
    assert "luab_data.beton.samples" in targets  # `from ... import` of names
    assert {i.target for i in GRAPH["luab_data.beton.file"]} >= {"luab_data.beton.integrity"}


def test_the_format_imports_nothing_above_it():
    assert offending("luab_data.beton", ABOVE_THE_FORMAT) == []


def test_loaders_do_not_import_writers_or_builds():
    assert (
        offending("luab_data.loaders", ("luab_data.writers", "luab_data.build", "luab_data.cli"))
        == []
    )


def test_writers_do_not_import_the_builds_or_loaders():
    """The Parquet build (build.py) and the CLI drive the writers, not the other way round."""
    assert (
        offending("luab_data.writers", ("luab_data.build", "luab_data.cli", "luab_data.loaders"))
        == []
    )


def _cycle_from(start: str) -> list[str] | None:
    """A shortest import cycle through `start`, as the modules along it, else None."""
    paths, seen = {start: [start]}, {start}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            for i in GRAPH[name]:
                if i.target == start:
                    return paths[name] + [start]
                if i.target not in seen:
                    seen.add(i.target)
                    paths[i.target] = paths[name] + [i.target]
                    following.append(i.target)
        frontier = following
    return None


def test_no_import_cycles():
    cycles = {tuple(sorted(c[:-1])): c for name in GRAPH if (c := _cycle_from(name))}
    assert [" -> ".join(c) for c in cycles.values()] == []


def test_a_planted_cycle_is_found():
    saved = GRAPH["luab_data.beton.paths"]
    GRAPH["luab_data.beton.paths"] = [
        *saved,
        Import("luab_data.beton.paths", "luab_data.beton.manifest", "planted"),
    ]
    try:
        assert _cycle_from("luab_data.beton.paths") == [
            "luab_data.beton.paths",
            "luab_data.beton.manifest",
            "luab_data.beton.paths",
        ]
    finally:
        GRAPH["luab_data.beton.paths"] = saved
