"""Data loading off the training thread: samples/s of the `tiny` recipe's Stage I with the
encoder live (audio decoding, log-mel features and SpecAugment every step), with the data
loader in the training process (0 workers) and in worker processes, measured in one run.

Each setting trains the stage through the real training loop (`swv.train.train_recipe.train`)
for a warm-up window and a measurement window of `--steps` optimizer steps, and reports the
measurement window's samples/s; settings alternate for `--repeats` rounds and the best window
of each is kept (so bursts of load from other processes hit every setting alike).

Usage: python benchmarks/data_workers.py [--steps 15] [--workers 0 2] [--repeats 2] [recipe overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path


def last_rate(metrics: Path) -> float:
    rates = [r["samples_per_s"] for r in map(json.loads, metrics.read_text().splitlines()) if "samples_per_s" in r]
    if len(rates) < 2:
        raise SystemExit(f"{metrics}: expected a warm-up and a measurement window")
    return float(rates[-1])


def run_stage(overrides: list[str], workers: int, steps: int, output_dir: Path) -> float:
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import train

    settings = [f"output_dir={output_dir}", f"stages.0.max_steps={2 * steps}", f"stages.0.log_every={steps}",
                "stages.0.data.eval_datasets=[]", "data.use_feature_cache=false", f"data.num_workers={workers}"]
    loaded = load_recipe("tiny", [*overrides, *settings], default_registry())
    train(loaded, stage="alignment")
    return last_rate(output_dir / "alignment" / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per window (warm-up + measurement)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts; the first is the baseline")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. stages.0.batch_size=16")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="swv-bench-workers-"))

    import torch

    best: dict[int, float] = {}
    for round_ in range(args.repeats):
        for workers in args.workers:
            rate = run_stage(args.overrides, workers, args.steps, work / f"w{workers}-r{round_}")
            best[workers] = max(best.get(workers, 0.0), rate)

    base = best[args.workers[0]]
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}")
    print(f"{'Stage I (encoder live)':<30}{'samples/s':>12}{f'vs {args.workers[0]} workers':>16}")
    for workers in args.workers:
        print(f"{f'{workers} data loader workers':<30}{best[workers]:>12.1f}{best[workers] / base:>15.2f}x")
    print(f"work directory: {work}")


if __name__ == "__main__":
    sys.exit(main())
