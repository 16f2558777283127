"""Benchmark: the reference trainer's peak memory on image folders of 150 and 1,500 images.

Reproduce with:  python benchmarks/trainer_memory.py
Old behaviour:   git show <commit>:examples/sgcl_train.py > /tmp/old/sgcl_train.py
                 python benchmarks/trainer_memory.py --trainer /tmp/old/sgcl_train.py --no-check

Writes N synthetic 640 x 480 JPEG photos-like pictures (a sky-to-ground gradient, textured
noise, 3-8 random filled shapes; about 70 kB each) into a temporary folder, runs
``examples/sgcl_train.py --data <folder>`` on it in a subprocess (a short run: a saliency refresh
over every image at the start, then a few training steps, DataLoader workers on) and samples the
memory of the trainer's whole process tree (the trainer and its worker processes) from ``/proc``
every 20 ms:

- tree RSS: the sum of the processes' resident sets (pages shared by forked workers counted in
  each: an upper bound);
- tree PSS: the sum of their proportional set sizes (each shared page split between its sharers:
  the memory the run really takes);
- one process: ``ru_maxrss`` of the largest child (``resource.getrusage(RUSAGE_CHILDREN)``, measured
  in a fresh helper process for each run so that runs do not mask each other).

It prints one row per folder with its ratios to the smallest folder, and exits 1 when a ratio exceeds
``--max-ratio`` (1.25): the trainer's peak memory must not grow with the number of images. Linux only
(``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "examples" / "sgcl_train.py"
METRICS = ("tree_rss_mb", "tree_pss_mb", "max_process_rss_mb")


def synthetic_photo(index: int, size: tuple = (640, 480)) -> Image.Image:
    """A photo-like RGB picture: a vertical gradient with noise texture and a few blurred coloured shapes."""
    rng = np.random.default_rng(index)
    w, h = size
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(20, 200, 3)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    base = (1 - t) * top + t * bottom + rng.normal(0, 12, (h, w, 3))
    image = Image.fromarray(np.broadcast_to(base, (h, w, 3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.05, 0.25) * w, rng.uniform(0.05, 0.25) * h
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 6))
            draw.polygon([(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.0))
    grain = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray((np.asarray(image, dtype=np.float32) + grain).clip(0, 255).astype(np.uint8))


def write_folders(root: Path, counts: Sequence[int]) -> Dict[int, Path]:
    """One folder per count, ``root/images_<n>``, of hard links to the first n pictures of ``root/pool`` (written
    once: a kept ``root`` is reused and only missing pictures are drawn)."""
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    for i in range(max(counts)):
        path = pool / f"{i:012d}.jpg"
        if not path.exists():
            synthetic_photo(i).save(path, quality=90)
    folders = {}
    for n in counts:
        folder = root / f"images_{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for i in range(n):
            name = f"{i:012d}.jpg"
            try:
                os.link(pool / name, folder / name)
            except OSError:
                shutil.copyfile(pool / name, folder / name)
        folders[n] = folder
    return folders


def tree(pid: int) -> List[int]:
    """``pid`` and all its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:  # the process ended meanwhile
            continue
    return out


def memory_kb(pid: int) -> tuple:
    """(RSS, PSS) of one process in kB from /proc/<pid>/smaps_rollup; zeros once it has ended."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def measure(cmd: Sequence[str], interval: float = 0.02) -> Dict[str, float]:
    """Runs ``cmd`` and samples its process tree's memory until it ends (this function runs in a fresh helper
    process, so RUSAGE_CHILDREN covers this run only)."""
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT)
    peak_rss = peak_pss = 0
    processes = 1
    while proc.poll() is None:
        pids = tree(proc.pid)
        processes = max(processes, len(pids))
        sizes = [memory_kb(p) for p in pids]
        peak_rss = max(peak_rss, sum(s[0] for s in sizes))
        peak_pss = max(peak_pss, sum(s[1] for s in sizes))
        time.sleep(interval)
    seconds = time.perf_counter() - t0
    log.seek(0)
    output = log.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {
        "tree_rss_mb": peak_rss / 1024,
        "tree_pss_mb": peak_pss / 1024,
        "max_process_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "processes": float(processes),
        "seconds": seconds,
    }


def trainer_command(args: argparse.Namespace, folder: Path, out: Path) -> List[str]:
    return [
        sys.executable, str(args.trainer), "--smoke", "--data", str(folder), "--method", "simclr",
        "--arch", "tiny-resnet", "--image-size", str(args.image_size), "--epochs", "1", "--refresh-at-start",
        "--stop-after-steps", str(args.steps), "--workers", str(args.workers), "--pictures", "2",
        "--no-eval", "--no-progress", "--out", str(out),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[150, 1500], help="images per folder")
    p.add_argument("--trainer", type=Path, default=TRAINER, help="the training script to measure")
    p.add_argument("--workers", type=int, default=2, help="the trainer's DataLoader workers")
    p.add_argument("--steps", type=int, default=4, help="training steps after the refresh")
    p.add_argument(
        "--image-size", type=int, default=640,
        help="passed to the trainer: the square side the 0.1.0 trainer decoded folders to (now composed scenes only)",
    )  # fmt: skip
    p.add_argument("--max-ratio", type=float, default=1.25, help="peak memory of a folder / of the smallest, at most")
    p.add_argument("--no-check", action="store_true", help="report the ratios without failing (old trainers)")
    p.add_argument("--keep", type=Path, default=None, help="write the folders and runs here instead of a temp dir")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements to this file")
    args = p.parse_args(argv)
    if not Path("/proc/self/smaps_rollup").exists():
        p.error("this benchmark reads /proc/<pid>/smaps_rollup (Linux)")
    counts = sorted(set(args.counts))
    if len(counts) < 2 or counts[0] < 8:
        p.error("--counts needs two or more folder sizes, each >= 8 (one batch)")
    work = Path(tempfile.mkdtemp(prefix="sgcl_memory_")) if args.keep is None else args.keep
    rows: Dict[int, Dict[str, float]] = {}
    try:
        t0 = time.perf_counter()
        folders = write_folders(work, counts)
        mb = sum(f.stat().st_size for f in folders[counts[-1]].iterdir()) / 2**20
        print(f"{counts[-1]} JPEGs of 640 x 480 ({mb:.0f} MB) ready in {time.perf_counter() - t0:.0f} s", flush=True)
        for n in counts:
            cmd = trainer_command(args, folders[n], work / f"run_{n}")
            helper = [sys.executable, __file__, "--measure-json", json.dumps(cmd)]
            done = subprocess.run(helper, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout + done.stderr, file=sys.stderr)
                return 2
            rows[n] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{n} images: {rows[n]}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    ratios = {n: {m: rows[n][m] / rows[counts[0]][m] for m in METRICS} for n in counts}
    where = args.trainer.relative_to(ROOT) if args.trainer.is_relative_to(ROOT) else args.trainer
    print()
    print(f"trainer: {where}; {platform.machine()}, {os.cpu_count()} CPU cores, --workers {args.workers}, a refresh "
          f"over every image then {args.steps} steps")  # fmt: skip
    print()
    print(f"| images | peak tree RSS, MB (x {counts[0]:,}) | peak tree PSS, MB (x {counts[0]:,}) "
          f"| largest process RSS, MB (x {counts[0]:,}) | processes | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n in counts:
        r, q = rows[n], ratios[n]
        cells = " | ".join(f"{r[m]:.0f} ({q[m]:.2f})" for m in METRICS)
        print(f"| {n:,} | {cells} | {int(r['processes'])} | {r['seconds']:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "trainer": str(args.trainer)}, indent=2))
    worst = max(ratios[n][m] for n in counts for m in METRICS)
    verdict = "PASS" if worst <= args.max_ratio else "FAIL"
    print(f"\n{verdict}: largest ratio {worst:.2f} (target <= {args.max_ratio})")
    return 0 if verdict == "PASS" or args.no_check else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure-json":  # the helper process of one run
        print(json.dumps(measure(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
