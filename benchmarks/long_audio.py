"""Long clips through inference: peak memory and time to first token against clip length.

One run builds the ``tiny`` recipe's model (random init, no downloads) and saves it; then, for
synthetic clips (noise) of 1, 2, 4 and 10 minutes, a fresh process loads it the way ``swv infer``
does (``swv.infer.batch.load_pipeline``), decodes the file and generates one token. Per length:

* ``process peak MB``: the process's peak resident memory (``ru_maxrss``), what ``swv infer``
  needs in all (model loading included);
* ``inference peak MB``: the peak above the resident memory right after loading (the kernel's
  high-water mark is reset after loading through ``/proc/self/clear_refs``), i.e. what the
  clip itself costs; it must grow at most linearly with the duration;
* ``TTFT s``: time to first token from ``Stats`` (features, encoder, adapters, prefill);
* each divided by the first (shortest) length of the same run.

A random CTC head keeps almost every frame in the shrinking adapter, so the LLM sees ~17 audio
tokens per second here, far more than a trained model (~1 per second): the worst case.

    .venv/bin/python benchmarks/long_audio.py                 # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/long_audio.py --minutes 1 2   # other lengths
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SAMPLE_RATE = 16_000


def build_model(directory: Path, recipe: str) -> None:
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.runner import build_model as build

    loaded = load_recipe(recipe, [], registry=default_registry())
    build(loaded, None).save_pretrained(directory)


def write_clip(path: Path, seconds: float) -> None:
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32), SAMPLE_RATE)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}")


def worker(model_dir: Path, clip: Path, seconds: float) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    from swv.infer.batch import load_pipeline
    from swv.infer.settings import GenerationSettings
    from swv.infer.streaming import TextStream
    from swv.model.processor import decode_audio

    pipe = load_pipeline(model_dir)
    loaded = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM)
    samples, rate, name = decode_audio(clip)
    waveform = pipe.prepare(samples, rate, name, max_duration=seconds + 1)
    stream = TextStream(pipe, waveform, "Transcribe the speech.", GenerationSettings(max_new_tokens=1))
    for _ in stream:
        pass
    assert stream.stats is not None
    print(json.dumps({
        "process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "inference_mb": _status_mb("VmHWM") - loaded,
        "ttft": stream.stats.time_to_first_token,
        "windows": stream.stats.num_windows,
        "tokens": stream.stats.audio_tokens,
    }))


def measure(model_dir: Path, clip: Path, seconds: float) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", str(model_dir), str(clip), str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {seconds} s measurement failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--recipe", default="tiny", help="recipe whose (random-init) model is measured")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "CLIP", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), float(args.worker[2]))
        return
    lengths = sorted(args.minutes)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args.recipe)
        for minutes in lengths:
            clip = Path(tmp) / f"{minutes:g}min.wav"
            write_clip(clip, minutes * 60)
            rows.append((minutes, measure(model_dir, clip, minutes * 60)))
            clip.unlink()
    ref = rows[0][1]
    print(f"model: recipe {args.recipe!r} (random init); python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPU(s)")
    header = (f"{'minutes':>7} {'windows':>7} {'audio tok':>9} {'process peak MB':>15} {'inference peak MB':>17} "
              f"{'TTFT s':>7} {'duration ratio':>14} {'inference mem ratio':>19} {'TTFT ratio':>10}")
    print(header)
    print("-" * len(header))
    for minutes, r in rows:
        print(f"{minutes:>7g} {r['windows']:>7.0f} {r['tokens']:>9.0f} {r['process_mb']:>15.0f} "
              f"{r['inference_mb']:>17.0f} {r['ttft']:>7.2f} {minutes / lengths[0]:>13.1f}x "
              f"{r['inference_mb'] / ref['inference_mb']:>18.2f}x {r['ttft'] / ref['ttft']:>9.2f}x")
    print(f"(ratios against the {lengths[0]:g}-minute clip of this run)")


if __name__ == "__main__":
    main()
