"""The command line of the benchmarks (``python -m rwkvlab.bench``): one subcommand per module of the package."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from rwkvlab.bench.data import bench_data
from rwkvlab.bench.gpu import GPU_LIMIT_S, GPU_TARGETS, bench_gpu, format_gpu_summary, with_targets
from rwkvlab.bench.metrics import bench_metrics
from rwkvlab.bench.startup import format_startup, measure_startup
from rwkvlab.bench.scaling3d import SCALING3D_CPU_CAP_S, SCALING3D_CPU_SIZES, SCALING3D_GPU_SIZES, scaling3d_report
from rwkvlab.bench.train import BASELINE_MODEL, TRAIN_MODELS, bench_steps, format_steps, train_configs
from rwkvlab.bench._timing import cpu_label
from rwkvlab.bench.wkv import run as run_wkv

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    import rwkvlab.bench

    parser = argparse.ArgumentParser(prog="python -m rwkvlab.bench", description=rwkvlab.bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["wkv", "data", "metrics", "train", "gpu", "scaling3d", "startup"])
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append", help="default: cpu, and cuda if present")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds after which a measurement stops")
    parser.add_argument("--volumes", type=int, default=1, help="metrics: Synapse-like volumes to score")
    parser.add_argument("--spacing", type=float, nargs=3, help="metrics: voxel size (D H W); default voxels")
    parser.add_argument("--models", nargs="+", help=f"train: models (default {TRAIN_MODELS[0]} on the CPU, "
                        f"T/S/B on a GPU); the baseline {BASELINE_MODEL} is added on the CPU")
    parser.add_argument("--batch", type=int, help="train: batch size (default 4 on the CPU, 24 on a GPU)")
    parser.add_argument("--size", type=int, default=224, help="train: image size")
    parser.add_argument("--steps", type=int, help="train, gpu: timed steps per configuration (default 3 CPU, 10 GPU)")
    parser.add_argument("--compile", action="store_true", help="train, gpu: torch.compile the models")
    parser.add_argument("--sizes", type=int, nargs="+", help="scaling3d: cubic patch sides (default "
                        f"{' '.join(map(str, SCALING3D_CPU_SIZES))} on the CPU, "
                        f"{' '.join(map(str, SCALING3D_GPU_SIZES))} on a GPU)")
    parser.add_argument("--repeats", type=int, help="scaling3d: timed steps per case after one warm-up step, median "
                        "(default 2 on the CPU, 5 on a GPU); startup: fresh processes per notebook (default 3)")
    parser.add_argument("--cap", type=float, default=SCALING3D_CPU_CAP_S, help="scaling3d on the CPU: seconds per "
                        "case; larger cases predicted over it are skipped")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=VALUE",
                        help=f"gpu: replace a target ({', '.join(GPU_TARGETS)})")
    parser.add_argument("--in-process", action="store_true", help="scaling3d on the CPU: run the cases in this "
                        "process (faster to start; memory figures then carry earlier cases' freed memory)")
    args = parser.parse_args(argv)
    for name in ("batch", "size", "steps", "threads", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    if args.benchmark == "gpu":
        try:
            checks = bench_gpu(args.steps or 10, args.compile, with_targets(args.target))
        except (RuntimeError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        print(format_gpu_summary(torch.cuda.get_device_name(), checks, GPU_LIMIT_S))
        if not all(c.ok for c in checks):
            raise SystemExit(1)
        return
    if args.benchmark == "train":
        for name in args.device or ["cuda" if torch.cuda.is_available() else "cpu"]:
            device = torch.device(name)
            if name == "cuda" and not torch.cuda.is_available():
                parser.error("--device cuda: no CUDA GPU is visible")
            configs = train_configs(device, args.models, args.batch, args.size, args.compile)
            label = torch.cuda.get_device_name(device) if name == "cuda" else cpu_label()
            print(f"\ntrain step and inference on {label}, {args.size}x{args.size}, 9 classes")
            start = time.perf_counter()
            rows = bench_steps(configs, device, steps=args.steps or (10 if name == "cuda" else 3),
                               warmup=3 if name == "cuda" else 1)
            print("\n".join(format_steps(rows)))
            print(f"({time.perf_counter() - start:.0f} s)")
        return
    if args.benchmark == "scaling3d":
        if args.sizes is not None and min(args.sizes) < 1:
            parser.error(f"--sizes must be >= 1, got {args.sizes}")
        for name in args.device or ["cuda" if torch.cuda.is_available() else "cpu"]:
            if name == "cuda" and not torch.cuda.is_available():
                parser.error("--device cuda: no CUDA GPU is visible")
            device = torch.device(name)
            cuda = device.type == "cuda"
            sizes = args.sizes or (SCALING3D_GPU_SIZES if cuda else SCALING3D_CPU_SIZES)
            start = time.perf_counter()
            lines, _ = scaling3d_report(device, sizes, args.repeats or (5 if cuda else 2),
                                        cap_s=float("inf") if cuda else args.cap, threads=args.threads,
                                        isolate=not (cuda or args.in_process))
            print("\n".join(lines))
            print(f"({time.perf_counter() - start:.0f} s)")
        return
    if args.benchmark == "data":
        bench_data()
        return
    if args.benchmark == "startup":
        notebooks = sorted((Path(rwkvlab.bench.__file__).parents[2] / "notebooks").glob("*.ipynb"))
        print("\n".join(format_startup(measure_startup(notebooks, args.repeats or 3))))
        return
    if args.benchmark == "metrics":
        bench_metrics(args.volumes, args.spacing)
        return
    run_wkv(args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), args.runs, args.budget)
