"""What CTC rescoring (``ctc_weight``, :mod:`swv.infer.rescoring`) costs: transcripts of the
same clips generated in batches, with ``ctc_weight`` 0 (off, the baseline) and with the
demo's 0.4, alternated within each round (the order flips each round); each figure is the median
of ``--runs`` rounds after a warm-up.

The model is either built here (random init, the demo's architecture at its sizes, as in
``benchmarks/ttft.py``) or ``--model DIR`` (e.g. the demo's trained export
``runs/demo/run/sft/export``). A random model's answer and its CTC head's reading differ on
every clip, so every row is scored: the worst case. A trained export scores only the clips whose
two readings differ. Clips: the packaged ``tiny_speech`` espeak-ng utterances (1-4 s).

    nice -n 19 .venv/bin/python benchmarks/ctc_rescoring.py                   # ~2 min on 2 CPU cores
    nice -n 19 .venv/bin/python benchmarks/ctc_rescoring.py --model runs/demo/run/sft/export --clips 80
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from ttft import build_random, describe, quiet  # noqa: E402

from swv.assets import asset_path  # noqa: E402
from swv.infer.pipeline import Pipeline  # noqa: E402
from swv.infer.settings import GenerationSettings  # noqa: E402
from swv.model.processor import decode_audio  # noqa: E402
from swv.model.speechlm import SpeechLM  # noqa: E402

#: the demo recipe's weight (soundwave_core/recipes/demo.yaml)
DEMO_CTC_WEIGHT = 0.4


def clips(pipe: Pipeline, count: int) -> list:
    """The first ``count`` packaged espeak-ng utterances (repeated when fewer), prepared."""
    paths = sorted((Path(asset_path("tiny_speech")) / "audio").glob("*.flac"))
    waves = []
    for i in range(count):
        samples, rate, _ = decode_audio(paths[i % len(paths)])
        waves.append(pipe.prepare(samples, rate, paths[i % len(paths)].stem))
    return waves


def one_pass(pipe: Pipeline, waves: list, ctc_weight: float, batch_size: int) -> float:
    """Seconds to transcribe ``waves`` (greedy, the model's length bound) at ``ctc_weight``."""
    prompt = pipe.default_prompt("asr")
    start = time.perf_counter()
    pipe.generate(waves, [prompt] * len(waves), GenerationSettings(ctc_weight=ctc_weight, do_sample=False),
                  batch_size=batch_size)
    return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a saved model directory (default: random init, demo sizes)")
    parser.add_argument("--clips", type=int, default=32, help="clips transcribed per pass")
    parser.add_argument("--batch-size", type=int, default=32, help="rows generated together (the demo evaluates in 32)")
    parser.add_argument("--ctc-weight", type=float, default=DEMO_CTC_WEIGHT, help="the rescored variant's weight")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (median kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.clips < 1 or args.runs < 1 or args.batch_size < 1:
        parser.error("--clips, --runs and --batch-size must be >= 1")
    if not 0 < args.ctc_weight <= 1:
        parser.error("--ctc-weight must be in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(args.threads)
    with tempfile.TemporaryDirectory(prefix="swv-rescoring-") as tmp:
        source = args.model or build_random(Path(tmp) / "model", "trim", args.seed)
        model = SpeechLM.from_pretrained(source)
    pipe = Pipeline(model)
    waves = clips(pipe, args.clips)
    variants = {"off (ctc_weight 0)": 0.0, f"rescored ({args.ctc_weight:g})": args.ctc_weight}
    with torch.inference_mode():
        for weight in variants.values():  # warm-up
            one_pass(pipe, waves[: args.batch_size], weight, args.batch_size)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.runs):
            order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
            for name in order:
                times[name].append(one_pass(pipe, waves, variants[name], args.batch_size))
    print(describe(model, str(args.model) if args.model else "random init, demo sizes"))
    print(f"{datetime.date.today()}, {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPU(s), "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; {args.clips} clips in batches of "
          f"{args.batch_size}, median of {args.runs} alternated runs, load average {os.getloadavg()[0]:.1f}")
    header = f"{'variant':<20} {'seconds':>8} {'clips/s':>8}"
    print(header)
    print("-" * len(header))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"{name:<20} {seconds:>8.2f} {args.clips / seconds:>8.2f}")
    off, on = medians.values()
    print(f"rescored / off: {on / off:.2f}x the time")


if __name__ == "__main__":
    main()
