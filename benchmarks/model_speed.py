"""Training throughput and time-to-first-token: Soundwave's shrinking vs conv x3 / conv x4.

One run measures, on a randomly initialised model (no downloads) and synthetic audio:

* training forward + backward samples/s (adapters + LoRA trainable, Whisper and the LLM base
  frozen, loss = LM CE (+ 0.3 CTC for the Soundwave chain));
* eval time-to-first-token: encode + adapters + splice + the first greedy token
  (``SpeechLM.generate(max_new_tokens=1)``, batch size 1, from precomputed log-mel features);

for the adapter chains alignment+shrinking, conv x3 and conv x4, with the Whisper encoder in
``pad_to_30s`` (released Soundwave) and ``trim`` modes, at a few audio lengths. Ratios are taken
against conv x4 measured in the same run, mode and length.

A random-init CTC head changes its argmax at almost every frame, so the shrinking adapter then
keeps ~every frame; the paper's ~2.5% needs a trained alignment adapter. The "trained-CTC" rows
therefore replace the alignment adapter's CTC logits with a synthetic peaky distribution (one
token every ``--ctc-period`` frames within the speech, blank elsewhere, padded tail included),
which shows the intended compression and its effect on speed.

    .venv/bin/python benchmarks/model_speed.py            # ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/model_speed.py --quick    # < 30 s
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from swv.assets import asset_path  # noqa: E402
from swv.model.defaults import ASR_INSTRUCTION
from swv.model.prompts import PromptBuilder  # noqa: E402
from swv.model.speechlm import SpeechLM, SpeechLMConfig  # noqa: E402
from swv.nn.state import AudioState  # noqa: E402
from swv.nn.vocab_logits import VocabLogits  # noqa: E402

AUDIO_TOKEN = "<audio_patch>"
SOUNDWAVE = [{"name": "alignment", "compat": "released"}, {"name": "shrinking", "compat": "released"}]
BASELINE = "conv x4"


#: model name -> adapter chain (one model per chain and encoder mode)
CHAINS: dict[str, list[dict[str, Any]]] = {
    "soundwave": SOUNDWAVE,
    "conv x3": [{"name": "conv", "factor": 3}],
    "conv x4": [{"name": "conv", "factor": 4}],
}


@dataclass(frozen=True)
class Variant:
    name: str
    chain: str
    peaky_ctc: bool = False


VARIANTS = (
    Variant("shrinking (random CTC)", "soundwave"),
    Variant("shrinking (trained-CTC)", "soundwave", peaky_ctc=True),
    Variant("conv x3", "conv x3"),
    Variant("conv x4", "conv x4"),
)


@dataclass
class Result:
    mode: str
    seconds: float
    variant: str
    samples_per_s: float
    ttft_ms: float
    audio_tokens: float
    encoder_frames: float

    @property
    def compression(self) -> float:
        return self.audio_tokens / self.encoder_frames


# ----------------------------------------------------------------------------------------------
# The synthetic "trained" CTC head
# ----------------------------------------------------------------------------------------------
class PeakyCTC(nn.Module):
    """Wraps the alignment adapter; when ``enabled``, replaces its CTC logits ``[B, T, V]`` by a
    peaky distribution: within the first ``speech_frames[b]`` frames, a (new) token every
    ``period`` frames and blank in between; blank on the rest (the padded tail in pad_to_30s)."""

    def __init__(self, inner: nn.Module, blank_id: int, period: int) -> None:
        super().__init__()
        self.inner = inner
        self.blank_id = blank_id
        self.period = period
        self.enabled = False
        self.speech_frames: torch.Tensor | None = None  # [B], set before each call

    def forward(self, state: AudioState) -> AudioState:
        state = self.inner(state)
        if not self.enabled:
            return state
        assert state.ctc_logits is not None and self.speech_frames is not None
        batch, frames, vocab = state.ctc_logits.shape
        t = torch.arange(frames)
        in_speech = t[None, :] < self.speech_frames[:, None]  # [B, T]
        token = 10 + (t // self.period) % 200  # successive tokens differ
        ids = torch.where(in_speech & (t % self.period == 0)[None, :], token[None, :], self.blank_id)
        dtype = state.ctc_logits.hidden.dtype
        logits = torch.full((batch, frames, vocab), -10.0, dtype=dtype)
        logits.scatter_(2, ids[..., None], 10.0)
        # factored as the logits themselves times an identity head (the vocabulary here is small)
        return state.replace(ctc_logits=VocabLogits(logits, torch.eye(vocab, dtype=dtype)))


# ----------------------------------------------------------------------------------------------
# Model and data
# ----------------------------------------------------------------------------------------------
def model_config(args: argparse.Namespace, mode: str, adapters: list[dict[str, Any]]) -> SpeechLMConfig:
    whisper = {
        "d_model": args.enc_dim,
        "encoder_layers": args.enc_layers,
        "encoder_attention_heads": max(1, args.enc_dim // 64),
        "encoder_ffn_dim": 4 * args.enc_dim,
        "num_mel_bins": 80,
        "max_source_positions": 1500,
    }
    llama = {
        "hidden_size": args.llm_dim,
        "intermediate_size": 4 * args.llm_dim,
        "num_hidden_layers": args.llm_layers,
        "num_attention_heads": max(1, args.llm_dim // 64),
        "num_key_value_heads": max(1, args.llm_dim // 64),
        "max_position_embeddings": 4096,
    }
    return SpeechLMConfig(
        encoder={"name": "whisper", "random_init": whisper, "mode": mode},
        adapters=[dict(a) for a in adapters],
        backbone={
            "name": "llama",
            "random_init": llama,
            "tokenizer": str(asset_path("tiny_tokenizer")),
            "lora": {"r": 16, "alpha": 16, "dropout": 0.0},
        },
    )


def build(args: argparse.Namespace, mode: str, chain: str) -> SpeechLM:
    """A model with the named adapter chain; the alignment adapter is wrapped in :class:`PeakyCTC`
    (disabled until a trained-CTC variant is measured)."""
    torch.manual_seed(args.seed)  # same encoder and backbone weights for every chain
    model = SpeechLM(model_config(args, mode, CHAINS[chain]))
    if "alignment" in model.adapters:
        model.adapters["alignment"] = PeakyCTC(model.adapters["alignment"], model.audio_token_id, args.ctc_period)
    return model


def peaky(model: SpeechLM) -> PeakyCTC | None:
    """The model's :class:`PeakyCTC` wrapper (None for chains without an alignment adapter)."""
    wrapper = model.adapters["alignment"] if "alignment" in model.adapters else None
    return wrapper if isinstance(wrapper, PeakyCTC) else None


def use_peaky_ctc(model: SpeechLM, enabled: bool) -> None:
    wrapper = peaky(model)
    if wrapper is not None:
        wrapper.enabled = enabled


def synthetic_waves(seconds: float, count: int, seed: int) -> list[np.ndarray]:
    """Tones plus noise at 16 kHz (content is irrelevant to the speed of a random model)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return [(0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
            for i in range(count)]


def transcript(seconds: float) -> str:
    """About 2.5 words per second of speech."""
    words = "the quick brown fox jumps over a lazy dog while birds sing".split()
    return " ".join(words[i % len(words)] for i in range(max(1, round(2.5 * seconds))))


def training_batch(model: SpeechLM, waves: list[np.ndarray], text: str) -> dict[str, torch.Tensor]:
    prompts = PromptBuilder(model.tokenizer, model.config.system_prompt, AUDIO_TOKEN)
    ids, labels = prompts.training_ids(ASR_INSTRUCTION, text, True)
    batch = len(waves)
    feats, lens = model.encoder.extract_features(waves)
    target = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return {
        "input_features": feats,
        "feature_lengths": lens,
        "input_ids": torch.tensor([ids] * batch),
        "attention_mask": torch.ones(batch, len(ids), dtype=torch.long),
        "labels": torch.tensor([labels] * batch),
        "ctc_targets": torch.tensor([target] * batch),
        "ctc_target_lengths": torch.full((batch,), len(target)),
    }


def set_speech_frames(model: SpeechLM, feature_lengths: torch.Tensor) -> None:
    """Tell a PeakyCTC wrapper how many aligned frames hold speech (100 feature frames per
    second -> 50 encoder frames -> 25 stacked frames)."""
    wrapper = peaky(model)
    if wrapper is not None:
        wrapper.speech_frames = torch.div(feature_lengths + 3, 4, rounding_mode="floor")


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Everything one measurement needs, prepared (features included) before timing."""

    batch: dict[str, torch.Tensor]  # training batch
    gen_ids: torch.Tensor  # [1, L] generation prompt
    gen_features: torch.Tensor  # [1, M, F]
    gen_lengths: torch.Tensor  # [1]


def prepare(model: SpeechLM, seconds: float, args: argparse.Namespace) -> Inputs:
    waves = synthetic_waves(seconds, args.batch, args.seed)
    prompts = PromptBuilder(model.tokenizer, model.config.system_prompt, AUDIO_TOKEN)
    ids = torch.tensor([prompts.generation_ids(ASR_INSTRUCTION, True)])
    feats, lens = model.encoder.extract_features(waves[:1])
    return Inputs(training_batch(model, waves, transcript(seconds)), ids, feats, lens)


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def train_step(model: SpeechLM, inputs: Inputs) -> tuple[float, float]:
    """(seconds for one forward + backward, mean audio tokens per sample)."""
    model.train()
    batch = inputs.batch
    set_speech_frames(model, batch["feature_lengths"])
    with_ctc = "alignment" in model.adapters  # Stage II weighs CTC by 0.3; other chains have no CTC head
    inputs = batch if with_ctc else {k: v for k, v in batch.items() if not k.startswith("ctc_")}

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        out = model(**inputs)
        loss = out.lm_loss + 0.3 * out.ctc_loss if with_ctc else out.lm_loss
        loss.backward()
        return out.audio_lengths

    seconds, lengths = clock(step)
    return seconds, float(lengths.float().mean())


def first_token(model: SpeechLM, inputs: Inputs) -> float:
    """Seconds from log-mel features to the first generated token (batch size 1)."""
    model.eval()
    set_speech_frames(model, inputs.gen_lengths)
    ids = inputs.gen_ids
    with torch.no_grad():
        seconds, _ = clock(lambda: model.generate(ids, torch.ones_like(ids), inputs.gen_features, inputs.gen_lengths,
                                                  max_new_tokens=1, min_new_tokens=1, do_sample=False))
    return seconds


def run(args: argparse.Namespace) -> list[Result]:
    """Every variant at every length, repeated round-robin (so a burst of load from other
    processes hits all variants alike); each figure is the best of ``args.repeats``."""
    results: list[Result] = []
    for mode in args.modes:
        models = {chain: build(args, mode, chain) for chain in CHAINS}
        inputs = {(chain, s): prepare(models[chain], s, args) for chain in CHAINS for s in args.seconds}
        for chain, model in models.items():  # one-time costs (allocator, kernels) out of the timings
            for _ in range(args.warmup):
                train_step(model, inputs[chain, args.seconds[0]])
                first_token(model, inputs[chain, args.seconds[0]])
        best: dict[tuple[float, str], list[float]] = {}
        for _ in range(args.repeats):
            for seconds in args.seconds:
                for variant in VARIANTS:
                    model, item = models[variant.chain], inputs[variant.chain, seconds]
                    use_peaky_ctc(model, variant.peaky_ctc)
                    train_s, tokens = train_step(model, item)
                    ttft_s = first_token(model, item)
                    old = best.get((seconds, variant.name), [float("inf"), float("inf"), tokens])
                    best[seconds, variant.name] = [min(old[0], train_s), min(old[1], ttft_s), tokens]
            print(f"  {mode}: measured one round of {len(VARIANTS) * len(args.seconds)}", file=sys.stderr, flush=True)
        for seconds in args.seconds:
            for variant in VARIANTS:
                train_s, ttft_s, tokens = best[seconds, variant.name]
                item = inputs[variant.chain, seconds]
                frames = float(models[variant.chain].encoder.output_lengths(item.batch["feature_lengths"]).float().mean())
                results.append(Result(mode, seconds, variant.name, args.batch / train_s, 1000 * ttft_s, tokens, frames))
    return results


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    baseline = {(r.mode, r.seconds): r for r in results if r.variant == BASELINE}
    header = (f"{'encoder mode':<12} {'audio':>6} {'adapter':<24} {'samples/s':>9} {'x conv4':>7} "
              f"{'TTFT ms':>8} {'x conv4':>7} {'audio tok':>9} {'enc frames':>10} {'tok/frame':>9}")
    lines = [header, "-" * len(header)]
    for r in results:
        base = baseline[(r.mode, r.seconds)]
        lines.append(
            f"{r.mode:<12} {r.seconds:>5g}s {r.variant:<24} {r.samples_per_s:>9.2f} {r.samples_per_s / base.samples_per_s:>7.2f} "
            f"{r.ttft_ms:>8.1f} {r.ttft_ms / base.ttft_ms:>7.2f} {r.audio_tokens:>9.1f} {r.encoder_frames:>10.0f} "
            f"{100 * r.compression:>8.1f}%"
        )
    return "\n".join(lines)


def notes(args: argparse.Namespace) -> str:
    return "\n".join([
        "Notes:",
        f"* Random-init model (Whisper d_model {args.enc_dim} x {args.enc_layers} layers, Llama hidden {args.llm_dim} x "
        f"{args.llm_layers} layers, LoRA r=16, 512-token vocabulary), CPU threads: {torch.get_num_threads()}; "
        f"training batch {args.batch}; each number is the best of {args.repeats} run(s) after a warm-up per model "
        "(other processes on the machine add noise: compare ratios rather than absolute values).",
        "* samples/s: training forward + backward (no optimizer step). TTFT: log-mel features -> encoder -> adapters -> "
        "splice -> first greedy token, batch 1. 'x conv4': ratio to conv x4 in the same mode and length "
        "(samples/s: higher is faster; TTFT: lower is faster).",
        "* audio tok: audio embeddings per sample given to the LLM; tok/frame: audio tok / Whisper encoder frames "
        "(conv x3 ~33%, conv x4 25%; 1500 frames per sample in pad_to_30s mode).",
        "* 'shrinking (random CTC)': MEASURED with the random-init CTC head, whose argmax changes at almost every frame, "
        "so the shrinking adapter keeps most of the aligned frames (up to 50% of encoder frames after the pair stacking). "
        "This is NOT the paper's setting.",
        f"* 'shrinking (trained-CTC)': the same model with the alignment adapter's CTC logits replaced by a SYNTHETIC "
        f"peaky distribution (one token every {args.ctc_period} aligned frames within the speech, blank elsewhere, padded "
        "tail included; blank runs are kept as the released model does). It shows the compression and speed a trained "
        "alignment adapter gives (the paper reports 2.5% of encoder frames); the compute is real, only the CTC "
        "predictions are synthetic.",
        "* pad_to_30s: every clip runs the encoder on 30 s (released Soundwave), so encoder time is the same for all "
        "lengths; trim: the encoder sees only the clip.",
        "* Here the LLM is about as small as the encoder, so the LLM's share of the time (the part fewer audio tokens "
        "save) is far smaller than with Soundwave's 8B LLM behind a 635M encoder; the speed ratios understate the "
        "paper's setting, the token counts do not.",
        *load_warning(),
    ])


def load_warning() -> list[str]:
    """A note when other processes compete for the CPU (their load inflates and scatters timings)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return []
    cores = os.cpu_count() or 1
    if load <= 0.75 * cores:
        return []
    return [f"* WARNING: the machine was busy (1-min load {load:.1f} on {cores} cores): timings are noisy; "
            "re-run when idle, or with --threads 1 to avoid thread contention."]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller model, one length, batch 1 (< 30 s)")
    parser.add_argument("--seconds", type=float, nargs="+", default=None, help="audio lengths (default 3 8, quick 4)")
    parser.add_argument("--modes", nargs="+", choices=["pad_to_30s", "trim"], default=["pad_to_30s", "trim"])
    parser.add_argument("--batch", type=int, default=None, help="training batch size (default 2, quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 2, quick 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per model before measuring")
    parser.add_argument("--enc-dim", type=int, default=None, help="Whisper d_model (default 256, quick 128)")
    parser.add_argument("--enc-layers", type=int, default=None, help="Whisper layers (default 4, quick 2)")
    parser.add_argument("--llm-dim", type=int, default=None, help="Llama hidden size (default 256, quick 128)")
    parser.add_argument("--llm-layers", type=int, default=None, help="Llama layers (default 4, quick 2)")
    parser.add_argument("--ctc-period", type=int, default=8, help="aligned frames per token in the trained-CTC variant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = {"seconds": [4.0], "repeats": 2, "batch": 1, "enc_dim": 128, "enc_layers": 2, "llm_dim": 128, "llm_layers": 2} if args.quick else {
        "seconds": [3.0, 8.0], "repeats": 2, "batch": 2, "enc_dim": 256, "enc_layers": 4, "llm_dim": 256, "llm_layers": 4}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if max(args.seconds) > 30 or min(args.seconds) <= 0:
        parser.error("--seconds must be in (0, 30]")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    results = run(args)
    print(table(results))
    print()
    print(notes(args))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
