"""benchmarks/gpu_smoke.py, the one prepared GPU script: its checks run end to end (tiny, on the CPU here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytest.importorskip("skimage")

import gpu_smoke  # noqa: E402


def test_quick_run_passes_every_check_and_writes_its_block(tmp_path, capsys) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    assert gpu_smoke.main(["--device", "cpu", "--quick", "--doc", str(doc)]) == 0
    out = capsys.readouterr().out
    for check in ("fiedler krylov, N = 144", "autocast, objects mode", "--augment-on-device", "bf16-mixed",
                  "refresh throughput", "hierarchy mode's stages"):  # fmt: skip
        assert check in out
    assert "FAIL" not in out
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nkept") and text.count(gpu_smoke.BEGIN) == 1
    gpu_smoke.write_block(doc, gpu_smoke.table([("x", "ok", "y")], "cmd"))  # replaced, not appended
    assert doc.read_text().count(gpu_smoke.BEGIN) == 1 and "| x | ok | y |" in doc.read_text()


def test_a_failing_check_is_a_row_and_the_exit_status(tmp_path, monkeypatch, capsys) -> None:
    def broken(device):  # a section that raises: the others still run, the script exits 1
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_smoke, "autocast_rows", broken)
    assert gpu_smoke.main(["--device", "cpu", "--quick", "--no-write", "--sections", "autocast,solvers"]) == 1
    out = capsys.readouterr().out
    assert "| autocast | FAIL | RuntimeError: boom |" in out and "fiedler krylov, N = 144" in out
    assert "refresh throughput" not in out  # a section not chosen does not run


def test_an_unknown_section_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        gpu_smoke.main(["--device", "cpu", "--quick", "--no-write", "--sections", "autocast,nonsense"])
    assert "nonsense" in capsys.readouterr().err
