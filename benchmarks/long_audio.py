"""Long clips through ``swv infer``: peak memory and time to first token against clip length.

One run builds the ``tiny`` recipe's model (random init, no downloads), saves it, then runs
``swv infer --max-duration ... --stats --max-new-tokens 1`` on synthetic clips (noise) of
1, 2, 4 and 10 minutes, each in a fresh process, and prints for each length the process's peak
resident memory (``ru_maxrss`` of the child), the time to first token reported by ``--stats``,
and both divided by the 1-minute figures of the same run. ``mem above load`` is the peak minus
the resident memory of the same process right after loading the model (measured with a 1 s
clip), i.e. what the clip itself costs; it should grow at most linearly with the length.

A random CTC head keeps almost every frame in the shrinking adapter, so the LLM sees ~25
audio tokens per second here: far more than a trained model (~1 per second), the worst case.

    .venv/bin/python benchmarks/long_audio.py                 # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/long_audio.py --minutes 1 2   # other lengths
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SAMPLE_RATE = 16_000
TTFT = re.compile(r"TTFT ([0-9.]+) s")
WINDOWS = re.compile(r"\((\d+) window")
TOKENS = re.compile(r"audio tokens (\d+)")


def build_model(directory: Path, recipe: str) -> None:
    from swv.pluginmanager import default_registry
    from swv.recipes.loader import load_recipe
    from swv.train.runner import build_model as build

    loaded = load_recipe(recipe, [], registry=default_registry())
    build(loaded, None).save_pretrained(directory)


def write_clip(path: Path, seconds: float) -> None:
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32), SAMPLE_RATE)


def run_infer(model_dir: Path, clip: Path, seconds: float) -> dict[str, float]:
    """One ``swv infer`` process; its peak RSS (MB), TTFT (s), windows and audio tokens."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cmd = [sys.executable, "-m", "swv.cli", "infer", str(model_dir), str(clip), "--stats", "--max-new-tokens", "1",
           "--max-duration", str(seconds + 1)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"swv infer failed on {seconds} s (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise SystemExit("cannot attribute the peak RSS to this child (an earlier child peaked higher)")
    return {
        "peak_mb": peak / 1024,
        "ttft": float(TTFT.search(proc.stderr).group(1)),
        "windows": float(WINDOWS.search(proc.stderr).group(1)),
        "tokens": float(TOKENS.search(proc.stderr).group(1)),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--recipe", default="tiny", help="recipe whose (random-init) model is measured")
    args = parser.parse_args()
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: run the lengths shortest first.
    lengths = sorted(args.minutes)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args.recipe)
        base_clip = Path(tmp) / "1s.wav"
        write_clip(base_clip, 1.0)
        base = run_infer(model_dir, base_clip, 1.0)
        rows = []
        for minutes in lengths:
            clip = Path(tmp) / f"{minutes:g}min.wav"
            write_clip(clip, minutes * 60)
            rows.append((minutes, run_infer(model_dir, clip, minutes * 60)))
    ref = rows[0][1]
    print(f"model: recipe {args.recipe!r} (random init); python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPU(s); 1 s clip peak: {base['peak_mb']:.0f} MB")
    header = (f"{'minutes':>7} {'windows':>7} {'audio tok':>9} {'peak MB':>8} {'mem above load MB':>17} "
              f"{'TTFT s':>7} {'peak ratio':>10} {'above-load ratio':>16} {'TTFT ratio':>10}")
    print(header)
    print("-" * len(header))
    ref_above = max(ref["peak_mb"] - base["peak_mb"], 1e-9)
    for minutes, r in rows:
        above = r["peak_mb"] - base["peak_mb"]
        print(f"{minutes:>7g} {r['windows']:>7.0f} {r['tokens']:>9.0f} {r['peak_mb']:>8.0f} {above:>17.0f} "
              f"{r['ttft']:>7.2f} {r['peak_mb'] / ref['peak_mb']:>9.2f}x {above / ref_above:>15.2f}x "
              f"{r['ttft'] / ref['ttft']:>9.2f}x")
    print(f"(ratios against the {lengths[0]:g}-minute clip of this run)")


if __name__ == "__main__":
    main()
