"""Time to first token: the shrinking adapter against conv x4 (issue 28, item 4; the paper's
Table 8: 72 ms vs 85 ms with 2.5 % of the encoder frames kept).

Two models share the SAME encoder and LLM (the very same module objects, so the same weights,
LoRA included) and differ only in the adapter chain:

* ``shrinking``: the model measured (alignment + shrinking, as loaded);
* ``conv x4``: a randomly initialised conv x4 adapter (``{"name": "conv", "factor": 4}``) in place
  of the chain.

The model is either built here (default: random init, no downloads; the demo's architecture at
its sizes: a Whisper tiny-sized encoder 4 x 384, alignment stacking 8 frames + shrinking with the
posterior embedding and no blank runs, a SmolLM2-135M-sized Llama 30 x 576 with 49,152 tokens
and LoRA r=16; saved with ``save_pretrained`` and loaded back with ``SpeechLM.from_pretrained``),
or ``--model DIR``, any saved model (e.g. the demo's trained export
``runs/demo/run/sft/export``).

TTFT is the pipeline's ``Stats.time_to_first_token`` of one request (batch 1, greedy, one new
token): feature extraction, encoder, adapters, splice, the LLM's prefill and the first token,
as ``swv infer`` runs them. Clips are the packaged ``tiny_speech`` espeak-ng utterances joined to
each length. Variants alternate within every round (the order flips each round); each figure
is the median of ``--runs`` rounds after a warm-up. ``kept %`` is audio tokens / encoder frames
(conv x4: 25 %). A random-init CTC head changes its argmax at almost every frame, so the
random model's shrinking adapter keeps an arbitrary fraction (most stacked frames): only a
trained export (``--model``) measures the paper's setting.

    nice -n 19 .venv/bin/python benchmarks/ttft.py                         # ~3 min on 2 CPU cores
    nice -n 19 .venv/bin/python benchmarks/ttft.py --model runs/demo/run/sft/export
    nice -n 19 .venv/bin/python benchmarks/ttft.py --seconds 5 --runs 3    # quicker
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from swv.assets import asset_path  # noqa: E402
from swv.infer.pipeline import Pipeline  # noqa: E402
from swv.infer.settings import GenerationSettings  # noqa: E402
from swv.model.processor import decode_audio  # noqa: E402
from swv.model.speechlm import SpeechLM, SpeechLMConfig  # noqa: E402

SAMPLE_RATE = 16_000
VARIANTS = ("shrinking", "conv x4")
CONV_X4 = {"name": "conv", "factor": 4}

#: Whisper tiny.en's encoder (4 layers, 384 wide) as transformers.WhisperConfig kwargs
WHISPER_TINY = {"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536,
                "num_mel_bins": 80, "max_source_positions": 1500}
#: SmolLM2-135M (30 layers, 576 wide, 49,152 tokens, tied embeddings) as LlamaConfig kwargs
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
                "max_position_embeddings": 8192, "rope_theta": 100000.0}
#: the demo recipe's adapter chain
DEMO_ADAPTERS = [{"name": "alignment", "stack": 8, "ctc_head_trainable": False},
                 {"name": "shrinking", "posterior_embedding": True, "keep_blank_runs": False}]


def build_random(directory: Path, mode: str, seed: int) -> Path:
    """Save a randomly initialised demo-sized model to ``directory``."""
    torch.manual_seed(seed)
    config = SpeechLMConfig(
        encoder={"name": "whisper", "random_init": WHISPER_TINY, "mode": mode},
        adapters=[dict(a) for a in DEMO_ADAPTERS],
        backbone={"name": "llama", "random_init": SMOLLM2_135M, "tokenizer": str(asset_path("tiny_tokenizer")),
                  "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        system_prompt="You are a helpful assistant that listens to speech.",
    )
    SpeechLM(config).save_pretrained(directory)
    return directory


def conv_x4_twin(model: SpeechLM, seed: int) -> SpeechLM:
    """A conv x4 model whose encoder and backbone ARE ``model``'s (shared modules)."""
    data = model.config.to_dict()
    data["adapters"] = [dict(CONV_X4)]
    torch.manual_seed(seed)
    twin = SpeechLM(SpeechLMConfig(**data))
    twin.encoder = model.encoder
    twin.backbone = model.backbone
    return twin.eval()


def speech_clip(seconds: float) -> np.ndarray:
    """The packaged espeak-ng utterances, in order, joined (0.2 s of silence between) and cut to
    ``seconds``."""
    folder = Path(asset_path("tiny_speech")) / "audio"
    pieces: list[np.ndarray] = []
    total = 0
    gap = np.zeros(int(0.2 * SAMPLE_RATE), dtype=np.float32)
    for path in sorted(folder.glob("*.flac")):
        samples, rate, _ = decode_audio(path)
        if rate != SAMPLE_RATE:
            raise SystemExit(f"{path}: expected {SAMPLE_RATE} Hz, got {rate}")
        mono = samples if samples.ndim == 1 else samples.mean(axis=-1)
        pieces += [mono.astype(np.float32), gap]
        total += mono.size + gap.size
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


def one_request(pipe: Pipeline, waveform: Any, prompt: str) -> tuple[float, int, int]:
    """(TTFT s, audio tokens, encoder frames) of one greedy one-token request."""
    # no CTC rescoring: the conv x4 twin has no CTC head, and the first token comes before it
    settings = GenerationSettings(max_new_tokens=1, do_sample=False, ctc_weight=0.0)
    result = pipe.generate_batch([waveform], [prompt], settings)[0]
    stats = result.stats
    assert stats.time_to_first_token is not None
    return stats.time_to_first_token, stats.audio_tokens, stats.encoder_frames


def measure(pipes: dict[str, Pipeline], seconds: list[float], runs: int) -> dict[tuple[float, str], list[tuple[float, int, int]]]:
    """Every (length, variant) ``runs`` times, variants alternating (order flipped each round)."""
    prompt = pipes[VARIANTS[0]].default_prompt("asr")
    waves = {s: pipes[VARIANTS[0]].prepare(speech_clip(s), SAMPLE_RATE, f"{s:g}s", max_duration=s + 1) for s in seconds}
    for s in seconds:  # warm-up: allocator, kernels
        for name in VARIANTS:
            one_request(pipes[name], waves[s], prompt)
    samples: dict[tuple[float, str], list[tuple[float, int, int]]] = {}
    for round_ in range(runs):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        for s in seconds:
            for name in order:
                samples.setdefault((s, name), []).append(one_request(pipes[name], waves[s], prompt))
    return samples


def table(samples: dict[tuple[float, str], list[tuple[float, int, int]]], seconds: list[float]) -> tuple[str, list[float]]:
    header = (f"{'audio':>6} {'enc frames':>10} {'shrink tok':>10} {'kept %':>7} {'conv4 tok':>9} "
              f"{'shrink ms':>9} {'conv4 ms':>9} {'shrink/conv4':>12}")
    lines, ratios = [header, "-" * len(header)], []
    for s in seconds:
        shrink, conv = samples[s, "shrinking"], samples[s, "conv x4"]
        t_shrink = statistics.median(r[0] for r in shrink)
        t_conv = statistics.median(r[0] for r in conv)
        frames, tokens = shrink[0][2], statistics.median(r[1] for r in shrink)
        ratios.append(t_shrink / t_conv)
        lines.append(f"{s:>5g}s {frames:>10d} {tokens:>10g} {100 * tokens / frames:>6.1f}% {conv[0][1]:>9d} "
                     f"{1000 * t_shrink:>9.1f} {1000 * t_conv:>9.1f} {t_shrink / t_conv:>11.2f}x")
    return "\n".join(lines), ratios


def describe(model: SpeechLM, source: str) -> str:
    enc = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    llm = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    return (f"model: {source}; encoder {enc:.1f} M parameters ({model.config.encoder.config.mode}), LLM {llm:.1f} M "
            f"(LoRA included), adapters {', '.join(model.adapters)}; dtype {'/'.join(dtypes)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a saved model directory (default: random init, demo sizes)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5.0, 10.0, 20.0], help="clip lengths (<= 30 s)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median kept)")
    parser.add_argument("--mode", choices=["trim", "pad_to_30s"], default="trim", help="Whisper mode of the random model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if max(args.seconds) > 30 or min(args.seconds) <= 0:
        parser.error("--seconds must be in (0, 30]")
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def quiet(threads: int | None) -> None:
    """``threads`` torch CPU threads (None: torch's choice); transformers' warnings and progress
    bars off (shared with the other benchmarks that import this one)."""
    if threads is not None:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(args.threads)
    with tempfile.TemporaryDirectory(prefix="swv-ttft-") as tmp:
        source = args.model or build_random(Path(tmp) / "model", args.mode, args.seed)
        model = SpeechLM.from_pretrained(source)
        pipes = {"shrinking": Pipeline(model), "conv x4": Pipeline(conv_x4_twin(model, args.seed))}
        samples = measure(pipes, args.seconds, args.runs)
    text, ratios = table(samples, args.seconds)
    print(describe(model, str(args.model) if args.model else "random init, demo sizes"))
    print(f"{datetime.date.today()}, {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPU(s), "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; median of {args.runs} alternated runs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(text)
    print(f"TTFT shrinking / conv x4, median over lengths: {statistics.median(ratios):.2f}x (target <= 0.85x)")


if __name__ == "__main__":
    main()
