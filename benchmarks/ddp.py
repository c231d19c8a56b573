"""Data-parallel training on the CPU (gloo): 1 versus 2 processes under torchrun.

1. `medclassify train` end to end under `torchrun --nproc-per-node P` for P = 1, 2 (same global
   batch, one thread per process as torchrun sets it): training images per second (history.csv,
   epochs after the first), scaling efficiency = img/s(2) / (2 x img/s(1)).
2. The communication share of a step: the same model and per-process batch stepped under DDP with
   the gradient all-reduce (normal steps) and inside `no_sync()` (no all-reduce); the share is the
   time the all-reduce adds, (sync - no_sync) / sync.

    python benchmarks/ddp.py [--images 320] [--size 64] [--epochs 3] [--batch 32] [--dataset NAME]

A generated dataset by default; --dataset NAME uses ../shared/datasets/NAME (skipped cleanly when
absent). Prints the figures and writes benchmarks/results/ddp.json."""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
RESULT = ROOT / "benchmarks" / "results" / "ddp.json"
sys.path.insert(0, str(ROOT / "src"))


def torchrun(nproc: int, *argv: str, env: dict) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "torchrun"
    cmd = [str(exe) if exe.is_file() else "torchrun", "--standalone", "--nproc-per-node", str(nproc), *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def train_speed(data: Path, nproc: int, args, work: Path, env: dict) -> dict:
    out = work / f"run{nproc}"
    t = time.perf_counter()
    done = torchrun(nproc, "-m", "medclassify", "train", str(data), "--out", str(out), "--model", args.model,
                    "--pretrained", "none", "--image-size", str(args.size), "--epochs", str(args.epochs), "--seed", "0",
                    "--batch-size", str(args.batch), "--precision", "fp32", "--quiet", env=env)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"torchrun {nproc} failed:\n{(done.stdout + done.stderr)[-2000:]}")
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    speeds = [float(r["train_images_per_s"]) for r in rows]
    steady = speeds[1:] or speeds  # the first epoch pays the warm-up
    return {"processes": nproc, "train_images_per_s": round(statistics.median(steady), 1),
            "per_epoch_images_per_s": [round(s, 1) for s in speeds], "train_loss": [round(float(r["train_loss"]), 4) for r in rows],
            "wall_s": round(wall, 1)}


def worker(args) -> None:
    """Under torchrun: time DDP steps with and without the gradient all-reduce (rank 0 writes JSON)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from medclassify.io import write_json
    from medclassify.models import create_model

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = create_model(args.model, 2, 1, "none", None, 0.2).to(memory_format=torch.channels_last)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    per_rank = args.batch // dist.get_world_size()
    x = torch.rand(per_rank, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (per_rank,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(ddp(x), y).backward()
        opt.step()

    def timed(sync: bool) -> float:
        times = []
        for _ in range(args.steps):
            dist.barrier()
            t = time.perf_counter()
            if sync:
                step()
            else:
                with ddp.no_sync():
                    step()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    for _ in range(3):
        step()  # warm-up
    rounds = [(timed(True), timed(False)) for _ in range(3)]  # interleaved: the machine's load changes
    sync_s = statistics.median(r[0] for r in rounds)
    nosync_s = statistics.median(r[1] for r in rounds)
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if dist.get_rank() == 0:
        write_json(args.worker, {
            "processes": dist.get_world_size(), "batch_per_process": per_rank, "step_s_with_allreduce": round(sync_s, 4),
            "step_s_without_allreduce": round(nosync_s, 4), "communication_share": round(max(0.0, sync_s - nosync_s) / sync_s, 3),
            "gradient_values": grads, "gradient_mb": round(grads * 4 / 1e6, 2)})
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=320, help="generated images (two classes)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="the global batch")
    ap.add_argument("--model", default="seed_cnn")
    ap.add_argument("--steps", type=int, default=10, help="steps per timing round of the communication share")
    ap.add_argument("--dataset", default=None, help="a folder under ../shared/datasets instead of generated images")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        print("SKIP: this PyTorch has no torch.distributed with gloo")
        return 0
    work = Path(tempfile.mkdtemp(prefix="medclassify-ddp-bench-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1",
               MEDCLASSIFY_CACHE=os.environ.get("MEDCLASSIFY_CACHE", str(work / "cache")))
    try:
        if args.dataset:
            data = SHARED / args.dataset
            if not data.is_dir():
                print(f"SKIP: {data} not found")
                return 0
        else:
            from medclassify.data.synthetic import generate_dataset

            data = generate_dataset(work / "data", per_class=args.images // 2, size=args.size, seed=0)
        # Cache and audit built once before timing, so neither run pays the decoding.
        runs = [train_speed(data, n, args, work, env) for n in (1, 2)]
        one, two = runs
        efficiency = two["train_images_per_s"] / (2 * one["train_images_per_s"])
        share_file = work / "share.json"
        done = torchrun(2, str(Path(__file__).resolve()), "--worker", str(share_file), "--model", args.model,
                        "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps), env=env)
        if done.returncode != 0:
            raise SystemExit(f"the communication-share worker failed:\n{(done.stdout + done.stderr)[-2000:]}")
        share = json.loads(share_file.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "what": "medclassify train under torchrun on the CPU (gloo), 1 vs 2 processes, one thread each",
        "dataset": args.dataset or f"generated, {args.images} images, {args.size} px",
        "model": args.model, "image_size": args.size, "global_batch": args.batch, "epochs": args.epochs,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_avg_1min": round(os.getloadavg()[0], 2)},
        "runs": runs, "scaling_efficiency": round(efficiency, 3), "speedup": round(two["train_images_per_s"] / one["train_images_per_s"], 3),
        "communication": share,
        "command": "python benchmarks/ddp.py " + " ".join(sys.argv[1:]),
    }
    from medclassify.io import write_json

    write_json(RESULT, result)
    for r in runs:
        print(f"{r['processes']} process(es): {r['train_images_per_s']:.1f} img/s training (epochs {r['per_epoch_images_per_s']}), "
              f"{r['wall_s']:.0f} s wall")
    print(f"speed-up {result['speedup']:.2f}x, scaling efficiency {efficiency:.0%}")
    print(f"communication: step {share['step_s_with_allreduce'] * 1000:.1f} ms with the all-reduce, "
          f"{share['step_s_without_allreduce'] * 1000:.1f} ms without -> {share['communication_share']:.0%} of a step "
          f"({share['gradient_mb']} MB of gradients per step)")
    print(f"machine: {os.cpu_count()} CPUs, load average {result['machine']['load_avg_1min']} (shared machines scale poorly)")
    print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
