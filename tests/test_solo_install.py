"""The documented solo-learn install (examples/solo/install.sh), run as written in a fresh venv.

Needs a solo-learn clone and a few minutes, so it runs only where ``SOLO_LEARN_DIR`` names a clone
(``make solo-check SOLO_LEARN_DIR=...``); CI has no GitHub access and skips it. It creates a venv,
installs the running interpreter's torch version there, runs the script, then checks in that venv that
(1) the three SGCL methods register, (2) the solo adapter tests all run (none skipped) and pass,
(3) a later ``pip install`` of sgcl_plugin keeps setuptools below 81, and (4) with setuptools raised
to 81+ (lightning 2.1.2 then lacks pkg_resources) the adapter's error names that cause first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOLO = os.environ.get("SOLO_LEARN_DIR", "")

pytestmark = pytest.mark.skipif(
    not (SOLO and (Path(SOLO) / "setup.py").is_file()),
    reason="set SOLO_LEARN_DIR to a solo-learn clone to run the install check (make solo-check)",
)


def run(cmd: list, **kwargs: object) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_install_script_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    torch_version = torch.__version__.split("+")[0]
    run([py, "-m", "pip", "install", "-q", f"torch=={torch_version}", "torchvision"])
    out = run(["bash", str(ROOT / "examples" / "solo" / "install.sh"), SOLO], env={**os.environ, "PYTHON": py})
    assert "registered ['sgcl_byol', 'sgcl_nnclr', 'sgcl_simclr']" in out.stdout

    # The adapter's tests in that venv: every one runs (solo is there), every one passes.
    run([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]", "setuptools>=77.0.3,<81"])
    tests = run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_adapter_solo.py")])
    summary = tests.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary and "failed" not in summary, summary

    # Reinstalling sgcl_plugin (what broke the old instructions) leaves setuptools where the script put it.
    run([py, "-m", "pip", "install", "-q", "-e", str(ROOT)])
    version = run([py, "-c", "import importlib.metadata as m; print(m.version('setuptools'))"]).stdout.strip()
    assert int(version.split(".")[0]) < 81, version

    # setuptools 81+ (no pkg_resources): the error says so first, not "solo-learn is missing".
    run([py, "-m", "pip", "install", "-q", "setuptools>=81"])
    code = (
        "from sgcl_plugin.adapters.solo import register\ntry:\n    register()\nexcept ImportError as e:\n    print(e)\n"
    )
    message = run([py, "-c", code]).stdout.strip()
    assert message.startswith("solo-learn is installed"), message
    assert "pkg_resources" in message.splitlines()[0] and "setuptools>=77.0.3,<81" in message, message
