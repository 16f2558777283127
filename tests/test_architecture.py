"""The package's import graph, read from its source with ``ast``: no module imports itself through others.

Every ``import sgcl_plugin.x`` / ``from sgcl_plugin.x import y`` statement counts, wherever it stands: at module
level, inside a function or method (a lazy import) or under ``if TYPE_CHECKING:``. A lazy import is there to
defer an optional or heavy module (``metrics`` -> ``crops``, the viewer's backbone and generator, ``solo`` -> the
Lightning adapter), never to hide a circle: such an edge is fine exactly when the graph with it has no cycle,
which is what the test checks. No edge is exempt, adapters included (none is needed: ``adapters.solo`` imports
``adapters.lightning`` lazily, and nothing leads back). The region-source table names its modes' functions by
``"module:attribute"`` strings, imported on first use: each is an edge from ``region_sources`` too.

The package root counts as the module ``sgcl_plugin``: a submodule that imported names from it would close a
circle through ``__init__.py``, which imports every public module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "sgcl_plugin"

Graph = Dict[str, Set[str]]


def module_name(path: Path) -> str:
    """``sgcl_plugin.adapters.solo`` for ``sgcl_plugin/adapters/solo.py``; the package for its ``__init__.py``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, modules: Set[str]) -> Set[str]:
    """The package's modules that the statements of ``tree`` import, at any depth of the tree.

    ``from sgcl_plugin.adapters import lightning`` imports the module ``sgcl_plugin.adapters.lightning`` (and
    the package ``sgcl_plugin.adapters``); ``from sgcl_plugin.bank import SaliencyBank`` the module ``bank``.
    """
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules, if any
    return found & modules


def table_modules() -> Set[str]:
    """The modules that the rows of ``REGION_SOURCES`` name in their ``"module:attribute"`` strings."""
    from sgcl_plugin.region_sources import REGION_SOURCES

    refs = [ref for row in REGION_SOURCES.values() for ref in (row.compute, row.options)]
    return {ref.partition(":")[0] for ref in refs if isinstance(ref, str)}


def import_graph() -> Graph:
    """Module -> the package modules it imports, for every ``.py`` file of the package (plus the table's modules
    for ``region_sources``)."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(paths)
    graph = {name: imported_modules(ast.parse(path.read_text(), str(path)), modules) for name, path in paths.items()}
    graph["sgcl_plugin.region_sources"] |= table_modules()
    return graph


def find_cycle(graph: Graph) -> List[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]`` when it has none (depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b"}}) == ["b", "b"]


def test_the_graph_holds_lazy_imports_and_the_core_modules() -> None:
    graph = import_graph()
    assert {"sgcl_plugin", "sgcl_plugin.images", "sgcl_plugin.refresh", "sgcl_plugin.adapters.solo"} <= set(graph)
    assert "sgcl_plugin.affinity" in graph["sgcl_plugin.features"]  # a function-level import (tokens_to_map)
    assert {"sgcl_plugin.hierarchy", "sgcl_plugin.heatmap"} <= graph["sgcl_plugin.region_sources"]  # named in the table
    assert "sgcl_plugin.adapters.lightning" in graph["sgcl_plugin.adapters.solo"]  # a lazy adapter import
    assert "sgcl_plugin.saliency" in graph["sgcl_plugin.refresh"]  # under TYPE_CHECKING
    assert "sgcl_plugin.features" in graph["sgcl_plugin.refresh"]  # module level


def test_no_import_cycle_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert not cycle, (
        f"Import cycle: {' -> '.join(cycle)}. Move what both modules need into a module that imports neither "
        "(images.py, features.py, checks.py ...), rather than hiding the circle in a function-level import."
    )


def test_image_decoding_and_eval_mode_live_below_the_refresh() -> None:
    graph = import_graph()
    assert graph["sgcl_plugin.images"] <= {"sgcl_plugin.checks", "sgcl_plugin.items"}  # a leaf: decoding only
    for name in ("features", "saliency", "images", "crops", "bank_crops", "ncut", "ncut_dense", "ncut_krylov"):
        assert "sgcl_plugin.refresh" not in graph[f"sgcl_plugin.{name}"], name


def test_the_split_modules_keep_their_concepts_apart() -> None:
    """The modules split out of the large ones (issue 20) stay one concept each: the crop step reads no bank, the
    pictures know nothing of files or the command line, the solvers and the per-pair losses stand below their
    fronts."""
    graph = import_graph()
    assert "sgcl_plugin.bank" not in graph["sgcl_plugin.crops"]  # bank_crops feeds it the bank's regions
    assert graph["sgcl_plugin.rendering"] <= {
        "sgcl_plugin.regions",
        "sgcl_plugin.checks",
    }  # drawing only; the viewer writes files
    assert "sgcl_plugin.ncut" not in graph["sgcl_plugin.ncut_dense"] | graph["sgcl_plugin.ncut_krylov"]
    assert graph["sgcl_plugin.pair_losses"] <= {"sgcl_plugin.checks"}
    # a candidate's objectness reads its cells and graph, nothing of the cuts or merges that made it
    assert graph["sgcl_plugin.objectness_factors"] <= {"sgcl_plugin.affinity", "sgcl_plugin.regions"}
    assert "sgcl_plugin.losses" not in set().union(*graph.values())  # the losses' namespace; no module reads it


HOSTS = ("adapters.lightly", "adapters.lightning", "adapters.solo", "train.trainer")
"""The modules that run SGCL inside a training framework (the trainer is the reference host)."""


def imported_names(path: Path) -> Set[str]:
    """The names ``from sgcl_plugin... import name`` statements of a file bring in, at any depth."""
    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sgcl_plugin"):
            names.update(alias.name for alias in node.names)
    return names


def test_hosts_refresh_only_through_the_driver() -> None:
    """One refresh driver (``sgcl_plugin.refresher``): no host imports the pieces it assembles (the one refresh,
    the schedule, the generator's resolution) to assemble them again, and every host imports the driver; the
    modules the driver reads never import it."""
    for host in HOSTS:
        names = imported_names(PACKAGE.joinpath(*host.split(".")).with_suffix(".py"))
        assert not names & {"refresh_bank", "RefreshSchedule", "resolve_generator"}, host
        assert names & {"SaliencyRefresher", "refresh_regions"}, host
    graph = import_graph()
    below = {"sgcl_plugin.refresh", "sgcl_plugin.schedule", "sgcl_plugin.features", "sgcl_plugin.saliency",
             "sgcl_plugin.bank", "sgcl_plugin.items", "sgcl_plugin.images", "sgcl_plugin.crops",
             "sgcl_plugin.bank_crops"}  # fmt: skip
    for module in below:
        assert "sgcl_plugin.refresher" not in graph[module], module


def test_the_argument_checks_are_a_leaf() -> None:
    """Every module may check its arguments with ``sgcl_plugin.checks``: it imports no package module, only torch
    and the standard library."""
    assert import_graph()["sgcl_plugin.checks"] == set()
    tree = ast.parse((PACKAGE / "checks.py").read_text())
    roots = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots <= {"__future__", "math", "numbers", "typing", "torch"}, roots


SCALAR_CHECK = re.compile(
    r"must be (an integer(?! tensor)|a finite number|a number in|>=|>|in [\[(]|positive)[^\n]*, got"
)
"""The message of a scalar argument check (a bound, an interval, an integer, a finite number) that names the value
it got: what ``sgcl_plugin.checks`` says, one function per invariant. Element-wise checks of a tensor's values
(``counts must be in [0, R]``) name no value and are not scalar checks."""

CLI_CHECKS = {("train/options.py", "*"), ("viewer.py", "main")}
"""The exclusions, (file, function): the command lines report bad flags in argparse's style (``parser.error``,
exit status 2) with their own messages, by flag name."""


def inline_scalar_checks() -> List[Tuple[str, str, int, str]]:
    """(file, innermost enclosing function, line, message) of every ``raise``, ``parser.error(...)`` and
    ``fail(...)`` whose message is a scalar check's, in every module but ``checks.py``."""
    found: List[Tuple[str, str, int, str]] = []

    def visit(node: ast.AST, rel: str, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        called = getattr(node.func, "attr", getattr(node.func, "id", "")) if isinstance(node, ast.Call) else ""
        if isinstance(node, ast.Raise) or called in ("error", "fail"):
            text = "".join(c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str))
            if SCALAR_CHECK.search(text):
                found.append((rel, function, node.lineno, text))
            return
        for child in ast.iter_child_nodes(node):
            visit(child, rel, function)

    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel != "checks.py":
            visit(ast.parse(path.read_text(), str(path)), rel, "<module>")
    return found


def test_scalar_argument_checks_live_in_the_checks_module() -> None:
    """No module writes a scalar check inline (``if x < 1: raise ValueError(f"x must be >= 1 ...")``): it calls
    ``sgcl_plugin.checks`` (check_int, check_number, check_interval, check_range, check_index), so each invariant
    has one function and one message. The command lines' argparse messages are the only exclusions."""
    found = inline_scalar_checks()
    assert {(f, n) for f, n, _, _ in found if (f, "*") in CLI_CHECKS or (f, n) in CLI_CHECKS}, "the scan finds nothing"
    inline = [(f, line, text) for f, n, line, text in found if (f, "*") not in CLI_CHECKS and (f, n) not in CLI_CHECKS]
    assert not inline, f"Inline argument checks (use sgcl_plugin.checks): {inline}"
