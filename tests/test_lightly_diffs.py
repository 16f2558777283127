"""The patches for lightly's own examples (docs/adapters/lightly/*.diff) stay well-formed and current.

The diffs turn lightly's ``examples/pytorch/byol.py``, ``examples/pytorch/simclr.py`` and
``examples/pytorch_lightning/byol.py`` into SGCL. lightly's files are not part of this repository,
so the checks work from the hunks alone:

- every diff is a unified diff of one file (``a/...`` / ``b/...`` headers) whose hunk line counts
  match the hunk bodies, and whose hunks are ordered and do not overlap;
- the pre-image rebuilt from the hunks (context and ``-`` lines at their line numbers, filler lines
  in between) takes the diff with ``patch -p1`` without offset or fuzz, and the result is the
  post-image rebuilt from the hunks (context and ``+`` lines);
- each hunk's new side compiles wherever its old side does (same context lines trimmed);
- every name the diffs import from ``sgcl_plugin`` exists, every adapter name they use is imported,
  and their calls of those names bind to the current signatures (needs lightly; skipped without);
- with ``SGCL_LIGHTLY_CHECKOUT=<a checkout of lightly>`` set, the diffs also dry-run against
  lightly's real files (skipped otherwise).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pytest

DIFF_DIR = Path(__file__).resolve().parents[1] / "docs" / "adapters" / "lightly"
DIFFS = {
    "byol.diff": "examples/pytorch/byol.py",
    "simclr.diff": "examples/pytorch/simclr.py",
    "lightning_byol.diff": "examples/pytorch_lightning/byol.py",
}
HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
FILLER = "# (line not in the diff)"


@dataclass
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: List[str] = field(default_factory=list)  # with their ' ', '-', '+' prefix, no newline

    @property
    def old(self) -> List[str]:
        return [line[1:] for line in self.lines if line[0] in " -"]

    @property
    def new(self) -> List[str]:
        return [line[1:] for line in self.lines if line[0] in " +"]

    def context_run(self, reverse: bool = False) -> int:
        """Number of context lines at the start (or end) of the hunk."""
        lines = reversed(self.lines) if reverse else iter(self.lines)
        count = 0
        for line in lines:
            if line[0] != " ":
                break
            count += 1
        return count


@dataclass
class FileDiff:
    old_path: str
    new_path: str
    hunks: List[Hunk]

    @property
    def added(self) -> List[str]:
        return [line[1:] for hunk in self.hunks for line in hunk.lines if line[0] == "+"]


def parse_diff(text: str) -> FileDiff:
    """Parses a unified diff of one file, checking its structure as it goes."""
    assert text.endswith("\n"), "the diff must end with a newline"
    lines = text.split("\n")[:-1]
    assert len(lines) >= 3, "too short for a unified diff"
    assert lines[0].startswith("--- ") and lines[1].startswith("+++ "), "must start with ---/+++ headers"
    old_path = lines[0][4:].split("\t")[0]
    new_path = lines[1][4:].split("\t")[0]
    hunks: List[Hunk] = []
    i = 2
    while i < len(lines):
        match = HUNK_HEADER.match(lines[i])
        assert match, f"line {i + 1}: expected a hunk header, got {lines[i]!r}"
        old_start, old_count, new_start, new_count = (
            int(match.group(1)),
            int(match.group(2) or 1),
            int(match.group(3)),
            int(match.group(4) or 1),
        )
        hunk = Hunk(old_start, old_count, new_start, new_count)
        i += 1
        old_seen = new_seen = 0
        while old_seen < old_count or new_seen < new_count:
            assert i < len(lines), f"hunk at line {old_start} ends early (counts {old_count}/{new_count})"
            line = lines[i]
            if line.startswith("\\"):  # "\ No newline at end of file"
                i += 1
                continue
            assert line[:1] in (" ", "-", "+"), f"line {i + 1}: bad hunk line {line!r}"
            if line[0] in " -":
                old_seen += 1
            if line[0] in " +":
                new_seen += 1
            hunk.lines.append(line)
            i += 1
        assert (old_seen, new_seen) == (old_count, new_count), f"hunk at {old_start}: line counts do not match"
        assert i == len(lines) or lines[i].startswith("@@"), f"line {i + 1}: text after the hunk's counted lines"
        hunks.append(hunk)
    assert hunks, "no hunks"
    return FileDiff(old_path, new_path, hunks)


def load(name: str) -> FileDiff:
    path = DIFF_DIR / name
    assert path.is_file(), f"{path} is missing"
    return parse_diff(path.read_text(encoding="utf-8"))


def rebuild(diff: FileDiff, side: str) -> List[str]:
    """The old or new file as far as the hunks show it; filler lines where the diff shows nothing."""
    out: List[str] = []
    for hunk in diff.hunks:
        start = hunk.old_start if side == "old" else hunk.new_start
        assert len(out) <= start - 1, f"hunk at {side} line {start} overlaps the one before"
        out += [FILLER] * (start - 1 - len(out))
        out += hunk.old if side == "old" else hunk.new
    return out  # nothing after the last hunk: a hunk with short trailing context ends the file


@pytest.mark.parametrize("name", sorted(DIFFS))
def test_diff_is_well_formed(name: str) -> None:
    diff = load(name)
    target = DIFFS[name]
    assert (diff.old_path, diff.new_path) == (f"a/{target}", f"b/{target}"), "paths for patch -p1 from lightly's root"
    offset = 0  # new_start - old_start grows by each hunk's net change
    previous_end = 0
    for hunk in diff.hunks:
        assert hunk.old_start > previous_end, "hunks must be ordered and not overlap"
        assert hunk.new_start - hunk.old_start == offset, f"hunk at {hunk.old_start}: new start inconsistent"
        assert any(line[0] in "+-" for line in hunk.lines), "a hunk without changes"
        assert hunk.context_run() <= 3 and hunk.context_run(reverse=True) <= 3, "more than 3 lines of context"
        offset += hunk.new_count - hunk.old_count
        previous_end = hunk.old_start + hunk.old_count - 1
    assert not any(line.rstrip() != line for line in diff.added), "trailing whitespace in added lines"


def _patch() -> str:
    patch = shutil.which("patch")
    if patch is None:
        pytest.skip("GNU patch is not installed")
    return patch


@pytest.mark.parametrize("name", sorted(DIFFS))
def test_diff_applies_to_its_rebuilt_pre_image(name: str, tmp_path: Path) -> None:
    patch = _patch()
    diff = load(name)
    target = tmp_path / DIFFS[name]
    target.parent.mkdir(parents=True)
    target.write_text("\n".join(rebuild(diff, "old")) + "\n", encoding="utf-8")
    diff_file = DIFF_DIR / name
    for extra in (["--dry-run"], []):
        result = subprocess.run(
            [patch, "-p1", "--batch", "--forward", *extra, "-i", str(diff_file)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert not re.search(r"offset|fuzz|reject", result.stdout + result.stderr, re.I), result.stdout
    assert target.read_text(encoding="utf-8") == "\n".join(rebuild(diff, "new")) + "\n"


@pytest.mark.parametrize("name", sorted(DIFFS))
def test_diff_applies_to_a_lightly_checkout(name: str) -> None:
    root = os.environ.get("SGCL_LIGHTLY_CHECKOUT")
    if not root:
        pytest.skip("set SGCL_LIGHTLY_CHECKOUT to a checkout of lightly to dry-run the diffs against its files")
    assert (Path(root) / DIFFS[name]).is_file(), f"{root} has no {DIFFS[name]}"
    result = subprocess.run(
        [_patch(), "-p1", "--batch", "--forward", "--dry-run", "-d", root, "-i", str(DIFF_DIR / name)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"fuzz|reject", result.stdout + result.stderr, re.I), result.stdout


def _compiles(lines: Sequence[str]) -> bool:
    try:
        compile(textwrap.dedent("\n".join(lines)) + "\n", "<hunk>", "exec")
    except SyntaxError:
        return False
    return True


def checked_fragments(diff: FileDiff) -> Tuple[List[str], int]:
    """The hunks' new sides that compile, and how many hunks could not be checked.

    A hunk can start or end inside a statement; context lines are trimmed from both ends until the
    old side compiles, and then the new side, trimmed the same way, must compile too.
    """
    fragments: List[str] = []
    unchecked = 0
    for hunk in diff.hunks:
        lead, trail = hunk.context_run(), hunk.context_run(reverse=True)
        found: Optional[Tuple[int, int]] = None
        for a in range(lead + 1):
            for b in range(trail + 1):
                if _compiles(hunk.old[a : len(hunk.old) - b]):
                    found = (a, b)
                    break
            if found:
                break
        if found is None:
            unchecked += 1
            continue
        a, b = found
        new = hunk.new[a : len(hunk.new) - b]
        source = textwrap.dedent("\n".join(new)) + "\n"
        try:
            compile(source, f"{diff.new_path} (hunk at new line {hunk.new_start})", "exec")
        except SyntaxError as err:
            pytest.fail(f"{diff.new_path}: the new side of the hunk at line {hunk.new_start} does not compile: {err}")
        fragments.append(source)
    return fragments, unchecked


@pytest.mark.parametrize("name", sorted(DIFFS))
def test_added_lines_compile(name: str) -> None:
    diff = load(name)
    fragments, unchecked = checked_fragments(diff)
    assert unchecked == 0, f"{unchecked} hunk(s) of {name} could not be checked: start or end them on a statement"
    added = {line.strip() for line in diff.added if line.strip() and not line.strip().startswith("#")}
    covered = {line.strip() for fragment in fragments for line in fragment.splitlines()}
    assert added <= covered, f"added lines outside the compiled fragments: {sorted(added - covered)}"


def sgcl_imports(trees: Sequence[ast.AST]) -> Dict[str, str]:
    """``{name: module}`` for every ``from sgcl_plugin... import name`` in the fragments."""
    names: Dict[str, str] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sgcl_plugin":
                for alias in node.names:
                    names[alias.asname or alias.name] = node.module  # type: ignore[assignment]
    return names


def test_diffs_import_from_sgcl_plugin() -> None:
    for name in DIFFS:
        fragments, _ = checked_fragments(load(name))
        imported = sgcl_imports([ast.parse(f) for f in fragments])
        assert {"SGCLDataset", "SGCLLoss", "SGCLTransform", "sgcl_collate", "SaliencyBank"} <= set(imported), name


def _bind(target: object, call: ast.Call, method: bool, where: str) -> None:
    """Binds a call's argument shape (positional count, keyword names) to ``target``'s signature."""
    if any(isinstance(arg, ast.Starred) for arg in call.args) or any(kw.arg is None for kw in call.keywords):
        return
    sig = inspect.signature(target)  # type: ignore[arg-type]
    params = list(sig.parameters.values())
    if method and params and params[0].name in ("self", "cls"):
        sig = sig.replace(parameters=params[1:])
    try:
        sig.bind(*[None] * len(call.args), **{kw.arg: None for kw in call.keywords if kw.arg})
    except TypeError as err:
        pytest.fail(
            f"{where}: `{ast.unparse(call)}` does not match {getattr(target, '__qualname__', target)}{sig}: {err}"
        )


def test_sgcl_names_exist_and_calls_bind() -> None:
    try:
        import lightly  # noqa: F401
    except ImportError as err:
        pytest.skip(f"lightly is not importable ({err}): sgcl_plugin.adapters.lightly needs it")
    lightly_adapter = importlib.import_module("sgcl_plugin.adapters.lightly")
    adapter_names: Set[str] = set(getattr(lightly_adapter, "__all__", ())) | {"SaliencyBank", "SGCLRefreshCallback"}
    for name in DIFFS:
        diff = load(name)
        fragments, _ = checked_fragments(diff)
        trees = [ast.parse(f) for f in fragments]
        imported = sgcl_imports(trees)
        objects: Dict[str, object] = {}
        for alias, module_name in imported.items():
            module = importlib.import_module(module_name)
            assert hasattr(module, alias), f"{name} imports {alias} from {module_name}, which has no such name"
            objects[alias] = getattr(module, alias)
        names = [n for t in trees for n in ast.walk(t) if isinstance(n, ast.Name)]
        used = {n.id for n in names} - {n.id for n in names if isinstance(n.ctx, ast.Store)}
        missing = sorted((used & adapter_names) - set(imported))
        assert not missing, f"{name} uses {missing} without importing them"
        # `x = Name(...)` (or `self.x = ...`): calls of x and of x.method bind to Name's signatures.
        instances: Dict[str, type] = {}
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                    func = node.value.func
                    if isinstance(func, ast.Name) and isinstance(objects.get(func.id), type):
                        for target in node.targets:
                            instances[ast.unparse(target)] = objects[func.id]  # type: ignore[assignment]
        for tree in trees:
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func, where = node.func, f"{name}: {ast.unparse(node)[:60]}"
                if isinstance(func, ast.Name) and func.id in objects:
                    obj = objects[func.id]
                    if isinstance(obj, type):
                        _bind(obj.__init__, node, True, where)
                    elif callable(obj):
                        _bind(obj, node, False, where)
                elif ast.unparse(func) in instances:
                    cls = instances[ast.unparse(func)]
                    _bind(getattr(cls, "forward", None) or cls.__call__, node, True, where)
                elif isinstance(func, ast.Attribute) and ast.unparse(func.value) in instances:
                    cls = instances[ast.unparse(func.value)]
                    method = getattr(cls, func.attr, None)
                    assert method is not None, f"{where}: {cls.__name__} has no {func.attr}"
                    if callable(method) and not isinstance(method, type):
                        _bind(method, node, True, where)


def test_lightning_callback_is_importable() -> None:
    """The Lightning diff imports the callback module; it must import without creating a callback."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    fragments, _ = checked_fragments(load("lightning_byol.diff"))
    imported = sgcl_imports([ast.parse(f) for f in fragments])
    assert imported.get("SGCLRefreshCallback") == "sgcl_plugin.adapters.lightning"
    module = importlib.import_module("sgcl_plugin.adapters.lightning")
    assert hasattr(module, "SGCLRefreshCallback")
