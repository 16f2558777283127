"""The README's training loop runs as printed, at a size a test affords (the substitutions are listed below)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import tiny_trunk  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"

SMALLER = {  # the README's value -> the test's (same meaning, a size a CPU test affords)
    "batch_size=64": "batch_size=4",
    "num_workers=8, persistent_workers=True": "num_workers=0",
    "every_n_epochs=10": "every_n_epochs=1",
    "saliency_size=640": "saliency_size=64",
    "size=96": "size=32",
}


def readme_loop() -> str:
    text = README.read_text()
    section = text[text.index("## SGCL in your training loop") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "the README's training loop has no python block"
    source = code.group(1)
    for old, new in SMALLER.items():
        assert old in source, f"the README's loop no longer says {old!r}: update this test's substitutions"
        source = source.replace(old, new)
    # The README's last line is "...": the optimizer step a user writes.
    return source.replace(
        "        ...\n",
        "        loss.backward(); optimizer.step(); optimizer.zero_grad(); losses.append(loss.item())\n",
    )


def test_the_readmes_training_loop_runs_and_refreshes(photos: list, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    backbone = tiny_trunk()
    online = torch.nn.Sequential(backbone, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 256))
    target = torch.nn.Sequential(
        tiny_trunk(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 256)
    )
    names = {
        "my_images": photos,
        "online_backbone": backbone,
        "online": online,
        "target": target,
        "epochs": 2,
        "optimizer": torch.optim.SGD(online.parameters(), lr=0.01),
        "losses": [],
    }
    exec(compile(readme_loop(), str(README), "exec"), names)
    bank = names["bank"]
    assert bank.refreshes == 1  # epoch 1 (never epoch 0)
    assert "SGCL refresh 1 at epoch 1" in capsys.readouterr().out
    assert len(names["losses"]) == 2 * (len(photos) // 4) and all(
        map(torch.isfinite, map(torch.tensor, names["losses"]))
    )
