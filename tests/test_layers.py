"""The import contract (`make lint` runs this file): no import loop between the packages of
daemon/scorefetch, read from the source's AST — every import counts, lazy ones in functions
and `TYPE_CHECKING` ones too, since each ties one package to another.

The packages form a graph without loops; the modules at the top of daemon/scorefetch
(cli, service, the registry in sources.py, status, retention, demo) compose them and are
imported by no package, except the leaves listed in LEAVES."""

from __future__ import annotations

import ast
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "scorefetch"
PACKAGES = tuple(sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
# Top-level modules a package may import: leaves that import no package themselves.
LEAVES = frozenset({"configfile"})
# No known loop is left: an import that closes one fails `make lint`.
KNOWN_LOOPS: dict[tuple[str, str], str] = {}

Edges = dict[tuple[str, str], list[str]]


def imported_modules(tree: ast.Module, module: list[str]) -> Iterable[tuple[str, int]]:
    """Every module an AST imports, absolute, with its line; `module` is its dotted path
    split (a package's __init__ included, so relative imports resolve)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module[: len(module) - node.level]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            yield prefix, node.lineno
            for alias in node.names:  # `from scorefetch import core` imports a package
                yield f"{prefix}.{alias.name}", node.lineno


def imports_of(path: Path, module: list[str]) -> list[tuple[str, int]]:
    """`imported_modules` of the file at `path`. CPython 3.11's parser can refuse a good
    file with "SystemError: AST constructor recursion depth mismatch" in a process whose
    recursion limit another test moved (Hypothesis does, under xdist the same worker runs
    this next): then the file is read in a fresh interpreter instead."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SystemError:
        script = (
            "import ast, json, sys; from tests.test_layers import imported_modules; "
            "tree = ast.parse(open(sys.argv[1], encoding='utf-8').read()); "
            "print(json.dumps(list(imported_modules(tree, sys.argv[2].split('.')))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, str(path), ".".join(module)],
            capture_output=True,
            text=True,
            check=True,
            cwd=PACKAGE.parents[1],
        )
        return [(name, line) for name, line in json.loads(out.stdout)]
    return list(imported_modules(tree, module))


def package_imports(root: Path, packages: Iterable[str]) -> Edges:
    """Which package under `root` imports which other one, and where (file:line)."""
    top, inside = root.name, set(packages)
    edges: Edges = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] not in inside:
            continue
        module = [top, *parts]  # package/__init__ stays: level 1 is the package itself
        for name, line in imports_of(path, module):
            words = name.split(".")
            if len(words) > 1 and words[0] == top and words[1] in inside and words[1] != parts[0]:
                where = f"{path.relative_to(root)}:{line}"
                found = edges.setdefault((parts[0], words[1]), [])
                if where not in found:
                    found.append(where)
    return edges


def find_loop(edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """One import loop as a path (a → b → a), or None when the graph has none."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            if (loop := visit(target, [*path, node])) is not None:
                return loop
        done.add(node)
        return None

    for start in sorted(graph):
        if (loop := visit(start, [])) is not None:
            return loop
    return None


def test_no_new_import_loop_between_packages() -> None:
    """Apart from today's known loops, the packages import each other without a loop."""
    edges = package_imports(PACKAGE, PACKAGES)
    loop = find_loop(set(edges) - set(KNOWN_LOOPS))
    if loop is not None:
        steps = itertools.pairwise(loop)
        where = "; ".join(f"{a} -> {b}: {', '.join(edges[a, b])}" for a, b in steps)
        raise AssertionError(f"import loop {' -> '.join(loop)} ({where})")
    # core is the bottom: it knows no configuration, vendor or destination
    assert [f"core -> {b}: {edges[a, b]}" for a, b in edges if a == "core"] == []


def test_each_known_loop_is_still_there() -> None:
    """A known loop that is gone leaves the list, so it cannot come back unnoticed."""
    edges = package_imports(PACKAGE, PACKAGES)
    for (source, target), why in KNOWN_LOOPS.items():
        assert (source, target) in edges and (target, source) in edges, (
            f"the {source} <-> {target} loop is gone ({why}): remove it from KNOWN_LOOPS"
        )


def test_packages_never_import_the_composition_root() -> None:
    """cli, service, the registry (sources.py), status, retention and demo sit above every
    package: a package that imported one would close a loop the package graph cannot see."""
    top = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} - LEAVES
    found = []
    for path in sorted(PACKAGE.glob("*/**/*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        for name, line in imports_of(path, ["scorefetch", *parts]):
            words = name.split(".")
            if len(words) > 1 and words[0] == "scorefetch" and words[1] in top:
                found.append(f"{path.relative_to(PACKAGE)}:{line} imports scorefetch.{words[1]}")
    assert found == []
    assert {"cli", "service", "sources", "status", "retention"} <= top  # the rule has teeth


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_contract_catches_a_loop_added_to_a_tree(tmp_path: Path) -> None:
    """In a small package tree a loop closed by a lazy relative import is found and named."""
    tree = {
        "shop/__init__.py": "",
        "shop/low/__init__.py": "",
        "shop/low/errors.py": "class ShopError(Exception): ...\n",
        "shop/high/__init__.py": "from shop.low.errors import ShopError\n",
        "shop/high/app.py": "from shop import low\nimport shop.mid.parts\n",
        "shop/mid/__init__.py": "",
        "shop/mid/parts.py": "from ..low import errors\n",
    }
    root = write(tmp_path, tree) / "shop"
    edges = package_imports(root, ("low", "mid", "high"))
    assert set(edges) == {("high", "low"), ("high", "mid"), ("mid", "low")}
    assert find_loop(edges) is None

    write(tmp_path, {"shop/low/errors.py": "def hint():\n    from ..high import app\n"})
    edges = package_imports(root, ("low", "mid", "high"))
    assert edges["low", "high"] == ["low/errors.py:2"]
    assert find_loop(edges) in (["high", "low", "high"], ["low", "high", "low"])
    assert find_loop(set(edges) - {("low", "high")}) is None  # a known exception


# Distribution (pyproject) → the module it is imported as, where they differ.
IMPORT_NAMES = {"pyyaml": "yaml"}


def declared_modules(extras: Iterable[str]) -> set[str]:
    """The modules the daemon may import: its dependencies and the named extras'."""
    import tomllib

    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    modules = set()
    for requirement in names:
        dist = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        modules.add(IMPORT_NAMES.get(dist, dist.replace("-", "_")))
    return modules


def test_the_daemon_imports_only_what_it_installs() -> None:
    """Every library daemon/scorefetch imports is one `make install` installs: a dependency
    or the metrics extra (`demo` may use the demo extra). A library the tests use only
    (bs4 and prometheus_client, kept as references for the fileName reader and the metrics
    text) or one the daemon dropped (structlog) cannot come back through an import that
    works only in a dev venv."""
    runtime, demo = declared_modules(["metrics"]), declared_modules(["metrics", "demo"])
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        allowed = demo if parts[0] == "demo" else runtime
        for name, line in imports_of(path, ["scorefetch", *parts]):
            top = name.split(".")[0]
            third_party = top not in {"", "scorefetch", *sys.stdlib_module_names}
            if third_party and top not in allowed:
                found.append(f"{path.relative_to(PACKAGE)}:{line} imports {top}")
    assert found == []
    assert {"urllib3", "certifi", "yaml", "paramiko"} <= runtime
    for dropped in ("bs4", "structlog", "prometheus_client"):  # the rule has teeth
        assert dropped not in runtime
