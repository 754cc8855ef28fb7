"""Training throughput per stage on the `tiny` recipe, measured in one run.

Runs the real training loop (`swv.train.train_recipe.train`) for each stage and reports the
samples/s of a measurement window that follows a warm-up window, plus:
- the alignment stage with the frozen encoder's outputs read from the feature cache
  (`swv data cache-features`) against the same stage running the encoder live;
- every stage against Stage II (shrinking), the stage that runs the whole model.

Usage: python benchmarks/train_throughput.py [--steps 20] [--workdir DIR] [recipe overrides...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def last_rate(metrics: Path) -> float:
    rates = [r["samples_per_s"] for r in map(json.loads, metrics.read_text().splitlines()) if "samples_per_s" in r]
    if len(rates) < 2:
        raise SystemExit(f"{metrics}: expected a warm-up and a measurement window")
    return float(rates[-1])


def run_stage(overrides: list[str], stage: str, steps: int, output_dir: Path, extra: list[str]) -> float:
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import train

    names = ["alignment", "shrinking", "sft"]
    idx = names.index(stage)
    settings = [f"output_dir={output_dir}", f"stages.{idx}.max_steps={2 * steps}", f"stages.{idx}.log_every={steps}", *extra]
    loaded = load_recipe("tiny", [*overrides, *settings], default_registry())
    train(loaded, stage=stage)
    return last_rate(output_dir / stage / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per window (warm-up + measurement)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. stages.0.batch_size=16")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="swv-bench-"))
    run = work / "run"

    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import cache_stage_features

    rows: list[tuple[str, float]] = []
    rows.append(("alignment (encoder live)", run_stage(args.overrides, "alignment", args.steps, run, ["data.use_feature_cache=false"])))
    cached_run = work / "cached"
    loaded = load_recipe("tiny", [*args.overrides, f"output_dir={cached_run}"], default_registry())
    cache_stage_features(loaded, "alignment", batch_size=16)
    rows.append(("alignment (feature cache)", run_stage(args.overrides, "alignment", args.steps, cached_run, [])))
    rows.append(("shrinking", run_stage(args.overrides, "shrinking", args.steps, run, [])))
    rows.append(("sft", run_stage(args.overrides, "sft", args.steps, run, [])))

    base = dict(rows)["shrinking"]
    print()
    print(f"{'stage':<28}{'samples/s':>12}{'vs shrinking':>15}")
    for name, rate in rows:
        print(f"{name:<28}{rate:>12.1f}{rate / base:>14.2f}x")
    live, cached = rows[0][1], rows[1][1]
    print(f"\nfeature cache speed-up on the alignment stage: {cached / live:.2f}x (same run, same data)")
    print(f"work directory: {work}")


if __name__ == "__main__":
    sys.exit(main())
