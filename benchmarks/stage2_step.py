"""One Stage II training step at the demo's sizes: where the time goes, and what the LM-side
savings of issue 14 buy, measured in one run.

The model is the demo's architecture, randomly initialised from configs (nothing downloaded):
a Whisper tiny.en-sized encoder (4 layers, 384 wide; frozen, its outputs computed once as the
demo's feature cache does), the alignment adapter (8 frames stacked, frozen, with the
49,152-row tied LM head as its CTC head), the shrinking adapter with the posterior embedding
(trained), a SmolLM2-135M-sized Llama (30 layers, 576 wide, 49,152 tokens, tied embeddings)
with LoRA r=16 on attention (trained). Batches of 8 come from the shipped `tiny` recipe's data
(real espeak-ng speech and text questions) through the real collator and prompt builder, with
the demo's system prompt. A random CTC head keeps almost every stacked frame (a trained one
keeps about one per token), so the audio is somewhat longer than in the trained demo; the batch
statistics are printed.

Variants, each a full step (forward, backward, AdamW step) on the same batches, alternated
round-robin, best of ``--repeats``:

* ``full logits``: the LM logits of every position of every row, then the cross-entropy (the
  computation before issue 14);
* ``factored head``: the LM head on the labelled positions only (``VocabLogits``);
* ``factored + shared prefix``: also the prompt prefix that all rows share (template header and
  system prompt) run once per batch (swv's training default).

With ``--precision bf16``, the default step also runs with the frozen linear and conv weights
held in bf16 (``swv.train.frozen_cast``, what training does under bf16) against the same step
with them float32 (autocast re-casting them at every use, as before issue 28), alternated,
median of ``--repeats``.

Then a ``torch.profiler`` table of the default step: the operators with the largest self CPU
time and their share.

    nice -n 19 .venv/bin/python benchmarks/stage2_step.py              # ~3 min on 2 CPU cores
    nice -n 19 .venv/bin/python benchmarks/stage2_step.py --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from swv.model.losses import lm_loss

SYSTEM_PROMPT = "You are a helpful assistant that listens to speech."

DEMO_SIZES = [
    f"model.system_prompt={SYSTEM_PROMPT}",
    "model.encoder.random_init.d_model=384",
    "model.encoder.random_init.encoder_layers=4",
    "model.encoder.random_init.encoder_attention_heads=6",
    "model.encoder.random_init.encoder_ffn_dim=1536",
    "model.adapters.0.stack=8",
    "model.adapters.0.ctc_head_trainable=false",
    "model.adapters.1.posterior_embedding=true",
    "model.adapters.1.keep_blank_runs=false",
    "model.backbone.random_init.hidden_size=576",
    "model.backbone.random_init.intermediate_size=1536",
    "model.backbone.random_init.num_hidden_layers=30",
    "model.backbone.random_init.num_attention_heads=9",
    "model.backbone.random_init.num_key_value_heads=3",
    "model.backbone.random_init.vocab_size=49152",
    "model.backbone.random_init.tie_word_embeddings=true",
    "model.backbone.lora.r=16",
    "model.backbone.lora.alpha=32",
    "model.backbone.lora.dropout=0.05",
    "stages.1.trainable=[adapters.shrinking,lora]",
    "stages.1.losses={lm: 1.0}",
    "stages.1.batch_size=8",
    "data.spec_augment.enabled=false",
]

VARIANTS = ("full logits", "factored head", "factored + shared prefix")


def build(precision: str, workdir: Path) -> tuple[Any, Any, Any]:
    """(accelerator, the shrinking stage's runner, its model with the trainable set applied)."""
    from accelerate import Accelerator

    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.runner import RunContext, StageRunner
    from swv.train.stages import recipe_stages

    registry = default_registry()
    loaded = load_recipe("tiny", [*DEMO_SIZES, f"output_dir={workdir}", f"precision={precision}"], registry)
    acc = Accelerator(cpu=True, mixed_precision=precision)
    ctx = RunContext(loaded, "benchmark", "", workdir, acc)
    runner = StageRunner(ctx, recipe_stages(loaded, registry)[1], None)
    torch.manual_seed(0)
    model = runner.prepare_model()
    return acc, runner, model


def make_batches(runner: Any, model: Any, count: int) -> list[dict[str, Any]]:
    """``count`` collated Stage II batches with the encoder's outputs precomputed."""
    data, sampler = runner.training_data(model)
    collate = runner.build_collator(model, training=True)
    order = iter(sampler)
    batches = []
    for _ in range(count):
        batch = collate(data.rows(next(order)))
        inputs = runner.stage.model_inputs(batch)
        if "input_features" in inputs:
            state = model.encoder(inputs.pop("input_features"), inputs.pop("feature_lengths"))
            inputs["encoder_embeds"], inputs["encoder_lengths"] = state.embeds, state.lengths
        batches.append(inputs)
    return batches


def full_logits_loss(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The LM loss from logits over every position (what ``SpeechLM.forward`` evaluates)."""
    state = None
    if "encoder_embeds" in inputs:
        state = model.encode_audio(encoder_embeds=inputs["encoder_embeds"], encoder_lengths=inputs["encoder_lengths"])
    spliced = model.splice(state, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
    logits = model.backbone(
        inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, position_ids=spliced.position_ids
    ).logits
    return lm_loss(logits, spliced.labels)


def step_fn(variant: str, acc: Any, model: Any, optimizer: torch.optim.Optimizer) -> Callable[[dict[str, Any]], None]:
    def step(inputs: dict[str, Any]) -> None:
        model.backbone.config.share_prompt_prefix = variant == "factored + shared prefix"
        with acc.autocast():
            loss = full_logits_loss(model, inputs) if variant == "full logits" else model(**inputs).lm_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def batch_stats(model: Any, batches: list[dict[str, Any]]) -> str:
    from swv.backbones.shared_prefix import shared_prefix_length

    tokens = padded = prefix = audio = rows = 0
    with torch.no_grad():
        for inputs in batches:
            state = None
            if "encoder_embeds" in inputs:
                state = model.encode_audio(encoder_embeds=inputs["encoder_embeds"], encoder_lengths=inputs["encoder_lengths"])
                audio += int(state.lengths.sum())
            spliced = model.splice(state, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            mask = spliced.attention_mask
            tokens += int(mask.sum())
            padded += mask.numel()
            rows += mask.shape[0]
            prefix += shared_prefix_length(spliced.inputs_embeds, mask, spliced.position_ids) * mask.shape[0]
    return (
        f"per row: {tokens / rows:.1f} tokens, {audio / rows:.1f} audio tokens, {prefix / rows:.1f} shared prefix; "
        f"padding {100 * (1 - tokens / padded):.1f} % of positions"
    )


def timings(acc: Any, model: Any, batches: list[dict[str, Any]], repeats: int) -> dict[str, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    steps = {v: step_fn(v, acc, model, optimizer) for v in VARIANTS}
    for v in VARIANTS:  # warm-up
        steps[v](batches[0])
    best = {v: float("inf") for v in VARIANTS}
    for _ in range(repeats):
        for v in VARIANTS:
            start = time.perf_counter()
            for inputs in batches:
                steps[v](inputs)
            best[v] = min(best[v], (time.perf_counter() - start) / len(batches))
    return best


def frozen_cast_timings(acc: Any, model: Any, batches: list[dict[str, Any]], repeats: int) -> dict[str, float]:
    """Median s/step of the default step with the frozen weights float32 (autocast re-casts
    them) and held in bf16, alternated (the order flips each round)."""
    from swv.train.frozen_cast import FrozenCast

    params = [p for p in model.parameters() if p.requires_grad]
    step = step_fn(VARIANTS[-1], acc, model, torch.optim.AdamW(params, lr=1e-5))
    cast = FrozenCast(model, torch.bfloat16)
    print(f"{len(cast)} frozen weight tensors held in bf16")
    names = ("frozen float32 (re-cast)", "frozen held in bf16")

    def run(name: str) -> float:
        restore = cast.restored() if name == names[0] else contextlib.nullcontext()
        with restore:
            start = time.perf_counter()
            for inputs in batches:
                step(inputs)
            return (time.perf_counter() - start) / len(batches)

    for name in names:  # warm-up
        run(name)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            samples[name].append(run(name))
    cast.release()
    return {name: statistics.median(values) for name, values in samples.items()}


def profile_table(acc: Any, model: Any, batches: list[dict[str, Any]], rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    params = [p for p in model.parameters() if p.requires_grad]
    step = step_fn(VARIANTS[-1], acc, model, torch.optim.AdamW(params, lr=1e-5))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for inputs in batches:
            step(inputs)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"{'operator':44s} {'self CPU %':>10s} {'calls/step':>10s}"]
    for e in events[:rows]:
        lines.append(f"{e.key[:44]:44s} {100 * e.self_cpu_time_total / total:9.1f}% {e.count / len(batches):10.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=["no", "bf16"], default="no", help="accelerate mixed precision")
    parser.add_argument("--batches", type=int, default=4, help="batches per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best kept)")
    parser.add_argument("--top", type=int, default=12, help="operators in the profile table (0: no profile)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    with tempfile.TemporaryDirectory(prefix="swv-bench-") as tmp:
        acc, runner, model = build(args.precision, Path(tmp))
        batches = make_batches(runner, model, args.batches)
        model.train()
        print(f"Stage II step, demo sizes, batch 8, precision {args.precision}, {torch.get_num_threads()} threads")
        print(batch_stats(model, batches))
        best = timings(acc, model, batches, args.repeats)
        base = best[VARIANTS[0]]
        print(f"\n{'variant':28s} {'s/step':>8s} {'speed-up':>9s}")
        for v in VARIANTS:
            print(f"{v:28s} {best[v]:8.3f} {base / best[v]:8.2f}x")
        if args.precision == "bf16":
            medians = frozen_cast_timings(acc, model, batches, args.repeats)
            base = next(iter(medians.values()))
            print(f"\n{'bf16 step (' + VARIANTS[-1] + ')':40s} {'s/step':>8s} {'speed-up':>9s}")
            for name, value in medians.items():
                print(f"{name:40s} {value:8.3f} {base / value:8.2f}x")
        if args.top > 0:
            print(f"\nprofile of '{VARIANTS[-1]}' ({args.batches} steps):")
            print(profile_table(acc, model, batches, args.top))


if __name__ == "__main__":
    main()
