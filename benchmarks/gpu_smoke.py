"""GPU smoke test and timings: one prepared script that proves the CUDA paths run (issue 13).

    python benchmarks/gpu_smoke.py                                  # one GPU, <= 5 minutes -> docs/benchmarks.md
    python benchmarks/gpu_smoke.py --device cpu --quick --no-write  # the same checks, tiny, on the CPU (tests)

Needs only what ``pip install -e '.[test]'`` brings (cupy rows when cupy is installed). Prints one table:

- the environment (torch, CUDA, card, cupy);
- every solver at N = 25 / 64 / 144 / 400 / 1600 against a float64 dense solve on the device (abs cos, ms);
- the saliency generator under bf16 / fp16 autocast against float32 (same regions);
- a refresh of 256 composed scenes on the device against the CPU, same weights (same regions);
- a tiny training run with ``--augment-on-device``; a Lightning ``bf16-mixed`` fit with the refresh callback;
- refresh throughput (images/s) at 640 px with a ResNet-50 (random weights) in paper, objects and hierarchy mode,
  and the generator's time on one batch as a share of the backbone's forward on it.

Every check is a row with ``ok`` / ``FAIL``; the script exits 1 when one fails, after writing the table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]

BEGIN, END = "<!-- gpu-smoke:begin -->", "<!-- gpu-smoke:end -->"
Row = Tuple[str, str, str]  # check, result, detail


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int = 3) -> Tuple[Any, float]:
    """The result of ``fn`` and its median wall time in milliseconds (after one warm-up call)."""
    out = fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return out, sorted(times)[len(times) // 2]


def environment(device: torch.device) -> Row:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    try:
        import cupy  # type: ignore[import-not-found]

        cupy_text = f"cupy {cupy.__version__} (CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()})"
    except Exception:  # noqa: BLE001 - not installed, or no driver
        cupy_text = "cupy not installed"
    detail = f"torch {torch.__version__}, CUDA {torch.version.cuda}, {card}, {cupy_text}"
    return ("environment", "ok", detail)


def graphs(B: int, N: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Cosine graphs of clustered features, as a backbone gives them (float32)."""
    from sgcl_plugin.affinity import cosine_affinity

    g = torch.Generator().manual_seed(seed)
    side = int(round(N**0.5))
    f = torch.randn(B, 64, side, side, generator=g)
    f[:, :16, : side // 2, : side // 2] += 2.0  # one block stands out
    return cosine_affinity(f.to(device))


def solver_rows(device: torch.device, sizes: Sequence[int], batch: int) -> List[Row]:
    from sgcl_plugin.ncut import fiedler_vector, resolve_solver

    rows: List[Row] = []
    solvers = ["eigh", "krylov", "auto"]
    try:
        import cupy  # type: ignore[import-not-found]  # noqa: F401

        if device.type == "cuda":
            solvers.append("cupy")
    except ImportError:
        pass
    for N in sizes:
        W = graphs(batch, N, device)
        ref = fiedler_vector(W.double(), solver="eigh")
        for solver in solvers:
            name = f"fiedler {solver}" + (f" (= {resolve_solver('auto', W)})" if solver == "auto" else "")
            try:
                y, ms = timed(lambda: fiedler_vector(W, solver=solver), device)  # noqa: B023
                cos = torch.nn.functional.cosine_similarity(y.double(), ref, dim=1).abs().min().item()
                ok = cos > 0.999
                rows.append(
                    (f"{name}, N = {N}, B = {batch}", "ok" if ok else "FAIL", f"min abs cos {cos:.6f}, {ms:.1f} ms")
                )
            except Exception as err:  # noqa: BLE001 - a row, not a crash
                rows.append((f"{name}, N = {N}, B = {batch}", "FAIL", f"{type(err).__name__}: {err}"[:200]))
    return rows


def autocast_rows(device: torch.device) -> List[Row]:
    from sgcl_plugin import SaliencyGenerator

    g = torch.Generator().manual_seed(1)
    f = torch.randn(8, 64, 20, 20, generator=g)
    f[:, :16, 5:12, 4:14] += 2.0
    f = f.to(device)
    dtypes = [torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    rows: List[Row] = []
    for mode in ("paper", "objects", "hierarchy"):
        gen = SaliencyGenerator(regions=mode, solver="krylov")
        ref = gen(f)
        for dtype in dtypes:
            check = f"generator under {str(dtype).split('.')[-1]} autocast, {mode} mode"
            try:
                with torch.autocast(device.type, dtype=dtype):
                    out = gen(f)
                diff = (out.maps - ref.maps).abs().max().item()
                same = all(torch.equal(a.boxes, b.boxes) for a, b in zip(out.regions, ref.regions))
                ok = out.maps.dtype == torch.float32 and diff == 0.0 and same
                rows.append((check, "ok" if ok else "FAIL", f"max map difference {diff:.2e}, same boxes: {same}"))
            except Exception as err:  # noqa: BLE001
                rows.append((check, "FAIL", f"{type(err).__name__}: {err}"[:200]))
    return rows


def refresh_rows(device: torch.device, images: int) -> List[Row]:
    from sgcl_plugin import FeatureMaps, SaliencyBank, SaliencyGenerator
    from sgcl_plugin.backbones import tiny_resnet
    from sgcl_plugin.refresh import refresh_bank
    from sgcl_plugin.testbed.scenes import ComposedScenes

    check = f"refresh of {images} composed scenes, {device.type} vs cpu"
    if device.type == "cpu":
        return [(check, "skipped", "no device to compare with")]
    try:
        scenes = [ComposedScenes(images, image_size=128, seed=0, image_only=True)[i] for i in range(images)]
        torch.manual_seed(0)
        model = FeatureMaps(tiny_resnet(16).eval(), stride=(8, 16))  # the hierarchy mode's pair (the default)
        banks = []
        for where in (torch.device("cpu"), device):
            bank = SaliencyBank(images)
            refresh_bank(SaliencyGenerator(), model.to(where), scenes, bank, saliency_size=192, progress=False)
            banks.append(bank.state_dict())
        a, b = banks
        same_counts = float((a["counts"] == b["counts"]).float().mean())
        box_diff = float((a["boxes"] - b["boxes"]).abs().max())
        ok = same_counts >= 0.95
        return [
            (check, "ok" if ok else "FAIL", f"same region count {100 * same_counts:.1f}%, max box diff {box_diff:.3f}")
        ]
    except Exception as err:  # noqa: BLE001
        return [(check, "FAIL", f"{type(err).__name__}: {err}"[:200])]


def trainer_row(device: torch.device) -> Row:
    from sgcl_plugin import train as sgcl_train

    check = "training script, --smoke --augment-on-device"
    try:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            result = sgcl_train.main(["--smoke", "--augment-on-device", "--no-progress", "--out", out])
            seconds = time.perf_counter() - t0
        ok = result["steps"] > 0 and 0.0 <= result["knn"] <= 1.0
        return (check, "ok" if ok else "FAIL", f"{int(result['steps'])} steps, {seconds:.1f} s, device {device.type}")
    except Exception as err:  # noqa: BLE001
        return (check, "FAIL", f"{type(err).__name__}: {err}"[:200])


def lightning_row(device: torch.device) -> Row:
    check = "Lightning fit, bf16-mixed, SGCLRefreshCallback"
    try:
        import lightning.pytorch as pl
    except ImportError:
        return (check, "skipped", "lightning is not installed")
    from torch import nn
    from torch.utils.data import DataLoader

    from sgcl_plugin import SaliencyBank, SaliencyCropDataset, SaliencyCropTransform, SaliencyWeightedLoss
    from sgcl_plugin.adapters.lightning import SGCLRefreshCallback
    from sgcl_plugin.testbed.scenes import ComposedScenes

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            from sgcl_plugin.backbones import tiny_resnet

            self.backbone = tiny_resnet(8)
            self.projector = nn.Linear(64, 16)
            self.loss = SaliencyWeightedLoss("ntxent", temperature=0.2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            t = batch["views1"].shape[1]
            z1 = self.projector(self.backbone(batch["views1"].flatten(0, 1)).mean((2, 3)))
            z2 = self.projector(self.backbone(batch["views2"].flatten(0, 1)).mean((2, 3)))
            return self.loss(z1, z2, batch["scores"].flatten(), image_ids=batch["index"].repeat_interleave(t))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    try:
        images = [ComposedScenes(16, image_size=96, seed=0, image_only=True)[i] for i in range(16)]
        bank = SaliencyBank(len(images))
        data = SaliencyCropDataset(images, SaliencyCropTransform(bank, num_regions=2, size=32))
        callback = SGCLRefreshCallback(bank, images, every_n_epochs=1, saliency_size=128, progress=False)
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=2, precision="bf16-mixed",
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[callback],
        )  # fmt: skip
        trainer.fit(Tiny(), DataLoader(data, batch_size=8))
        ok = bank.refreshes >= 1 and bool((bank.counts > 0).all())
        return (
            check,
            "ok" if ok else "FAIL",
            f"{bank.refreshes} refresh(es), {float(bank.counts.float().mean()):.1f} regions/image",
        )
    except Exception as err:  # noqa: BLE001
        return (check, "FAIL", f"{type(err).__name__}: {err}"[:200])


def throughput_rows(device: torch.device, images: int, size: int, workers: int) -> List[Row]:
    import torchvision

    from sgcl_plugin import FeatureMaps, SaliencyBank, SaliencyGenerator
    from sgcl_plugin.refresh import refresh_bank

    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g) for _ in range(images)]
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    backbone = torch.nn.Sequential(*list(net.children())[:-2]).to(device).eval()
    rows: List[Row] = []
    for mode, stride in (("paper", 32), ("objects", 16), ("hierarchy", (16, 32))):
        check = f"refresh throughput, ResNet-50 at {size} px, {mode} mode (stride {stride})"
        try:
            model = backbone if stride == 32 else FeatureMaps(backbone, stride)
            gen = SaliencyGenerator(regions=mode)
            bank = SaliencyBank(images)
            batch = 64 if device.type == "cuda" else 4
            options = dict(batch_size=batch, saliency_size=size, num_workers=workers, progress=False)
            refresh_bank(gen, model, data, bank, **options)  # warm-up (cuDNN autotuning, workers)
            sync(device)
            t0 = time.perf_counter()
            refresh_bank(gen, model, data, bank, **options)
            sync(device)
            rate = images / (time.perf_counter() - t0)
            rows.append((check, "ok", f"{rate:.1f} images/s ({images} images, batch {batch}, {workers} workers)"))
            rows.append(share_row(gen, model, device, batch, size, mode))
            if mode == "hierarchy":
                rows.append(hierarchy_stages_row(model, device, batch, size))
        except Exception as err:  # noqa: BLE001
            rows.append((check, "FAIL", f"{type(err).__name__}: {err}"[:200]))
    return rows


def share_row(gen: Any, model: Any, device: torch.device, batch: int, size: int, mode: str) -> Row:
    """The generator's time on one batch as a share of the backbone's forward on it (the same batch, on device)."""
    check = f"saliency share of the forward, ResNet-50 at {size} px, {mode} mode"
    try:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, size, size, generator=g).to(device)
        with torch.no_grad():
            feats, forward_ms = timed(lambda: model(x), device)
            _, saliency_ms = timed(lambda: gen(feats), device)
        share = 100 * saliency_ms / forward_ms
        detail = f"{share:.1f}% (forward {forward_ms:.1f} ms, saliency {saliency_ms:.1f} ms, batch {batch})"
        return (check, "ok", detail)
    except Exception as err:  # noqa: BLE001
        return (check, "FAIL", f"{type(err).__name__}: {err}"[:200])


def hierarchy_stages_row(model: Any, device: torch.device, batch: int, size: int) -> Row:
    """Where the hierarchy mode's time goes on one batch: the fine map's graph and embedding, the rest of the
    candidates (the coarse cut, k-means, the per-image merges on the CPU and the factors), and the selection."""
    from sgcl_plugin.hierarchy import HierarchyOptions, select_regions, source_candidates
    from sgcl_plugin.spectral import CutOptions, spectral_embedding

    check = f"hierarchy mode's stages, ResNet-50 at {size} px"
    try:
        cut, options = CutOptions(), HierarchyOptions()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, size, size, generator=g).to(device)
        with torch.no_grad():
            fine, coarse = model(x)
            _, embed_ms = timed(lambda: spectral_embedding(fine, cut, options.num_vectors, "hierarchy"), device)
            cands, cands_ms = timed(lambda: source_candidates(cut, options, fine, coarse), device)
            _, select_ms = timed(lambda: select_regions(cands), device)
        detail = (f"batch {batch}: fine graph + embedding {embed_ms:.1f} ms, rest of the candidates (coarse cut, "
                  f"k-means, merges, factors) {cands_ms - embed_ms:.1f} ms, selection {select_ms:.1f} ms")  # fmt: skip
        return (check, "ok", detail)
    except Exception as err:  # noqa: BLE001
        return (check, "FAIL", f"{type(err).__name__}: {err}"[:200])


def table(rows: List[Row], command: str) -> str:
    lines = [BEGIN, f"Reproduce: `{command}`", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c} | {r} | {d.replace('|', '/')} |" for c, r, d in rows]
    return "\n".join(lines + [END])


def write_block(doc: Path, block: str) -> None:
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## GPU smoke test (`benchmarks/gpu_smoke.py`)\n\n" + block + "\n"
    doc.write_text(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: a CPU check of the script itself")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--sections", help="comma-separated sections (default: all): rerun a failed one")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    command = " ".join(["python benchmarks/gpu_smoke.py", *(argv if argv is not None else sys.argv[1:])])
    sections: List[Tuple[str, Callable[[], Any]]] = [
        ("environment", lambda: [environment(device)]),
        ("solvers", lambda: solver_rows(device, [25, 64, 144] if args.quick else [25, 64, 144, 400, 1600],
                                        4 if args.quick else 64)),
        ("autocast", lambda: autocast_rows(device)),
        ("refresh", lambda: refresh_rows(device, 16 if args.quick else 256)),
        ("trainer", lambda: [trainer_row(device)]),
        ("lightning", lambda: [lightning_row(device)]),
        ("throughput", lambda: throughput_rows(device, 4 if args.quick else 512, 128 if args.quick else 640,
                                               0 if args.quick else 8)),
    ]  # fmt: skip
    names = [name for name, _ in sections]
    chosen = names if args.sections is None else [name for name in args.sections.split(",") if name]
    unknown = sorted(set(chosen) - set(names))
    if unknown or not chosen:
        parser.error(f"unknown --sections {unknown or chosen}; choose from {', '.join(names)}")
    rows: List[Row] = []
    for name, section in sections:
        if name not in chosen:
            continue
        t0 = time.perf_counter()
        try:
            got = section()
        except Exception:  # noqa: BLE001 - a section that crashes is a failed row, the others still run
            got = [(name, "FAIL", traceback.format_exc().strip().splitlines()[-1][:200])]
        rows += got
        for c, r, d in got:
            print(f"{r:>7}  {c}: {d}", flush=True)
        print(f"         ({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    block = table(rows, command)
    print(block)
    if not args.no_write:
        write_block(Path(args.doc), block)
        print(f"wrote {args.doc}")
    return 1 if any(r == "FAIL" for _, r, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
