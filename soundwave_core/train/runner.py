"""One training stage under accelerate: model, trainable set, data, optimisation loop,
checkpoints, metrics and the per-module export."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from swv.errors import SwvError, UsageError
from swv.io import atomic_write_json
from swv.train.checkpoint import (
    TrainerState,
    checkpoint_recipe_hash,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from swv.train.stages import Stage
from swv.train.trainable import apply_trainable, format_counts, is_peft_adapter_weight

FRAME_RATE = 100.0  # feature frames per second, for data.max_frames_per_batch


@dataclass
class RunContext:
    """What every stage of one ``swv train`` invocation shares."""

    loaded: Any  # swv.recipes.loader.LoadedRecipe
    recipe_hash: str
    recipe_yaml: str
    output_dir: Path
    accelerator: Any

    @property
    def recipe(self) -> Any:
        return self.loaded.recipe

    def print(self, *args: Any) -> None:
        if self.accelerator.is_main_process:
            print(*args, flush=True)


class StageRunner:
    def __init__(self, ctx: RunContext, stage: Stage, init_dir: Path | None) -> None:
        self.ctx = ctx
        self.stage = stage
        self.init_dir = init_dir
        self.stage_dir = ctx.output_dir / stage.name
        self.ckpt_dir = self.stage_dir / "checkpoints"
        self.export_dir = self.stage_dir / "export"
        self.acc = ctx.accelerator
        self.where = f"stages[{stage.index}] ({stage.name})"

    # -- set-up ---------------------------------------------------------------------------
    def build_model(self) -> Any:
        return build_model(self.ctx.loaded, self.init_dir)

    def open_feature_cache(self, model: Any) -> Any:
        """The recipe's feature cache, if the encoder is frozen and the cache matches it."""
        from swv.data.feature_cache import FeatureCache

        data = self.ctx.recipe.data
        if not data.use_feature_cache or any(p.requires_grad for p in model.encoder.parameters()):
            return None
        cache = FeatureCache.open(feature_cache_dir(self.ctx.recipe), model.encoder)
        if cache is not None:
            self.ctx.print(f"using the feature cache at {cache.directory} ({len(cache)} clips; SpecAugment does not apply to cached clips)")
        return cache

    def build_collator(self, model: Any, training: bool, feature_cache: Any = None) -> Any:
        from swv.data.collate import SpeechCollator
        from swv.model.prompts import PromptBuilder

        recipe = self.ctx.recipe
        prompts = None
        if self.stage.mode == "lm":
            prompts = PromptBuilder(model.tokenizer, model.config.system_prompt, model.backbone.config.audio_token)
        skip = {name for name, spec in recipe.data.datasets.items() if spec.on_error == "skip"}
        return SpeechCollator(
            model.encoder,
            model.tokenizer,
            mode=self.stage.mode,
            prompts=prompts,
            spec_augment=recipe.data.spec_augment if training else None,
            skip_sources=skip,
            with_ctc_targets=self.stage.ctc_weight > 0,
            feature_cache=feature_cache,
        )

    def total_steps(self, batches_per_epoch: int) -> int:
        s = self.stage.settings
        if s.max_steps is not None:
            return s.max_steps
        assert s.epochs is not None
        return max(1, math.ceil(s.epochs * batches_per_epoch / s.grad_accum))

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> Path:
        from transformers import get_scheduler

        from swv.train.data import load_stage_data, make_sampler

        s = self.stage.settings
        acc = self.acc
        model = self.build_model()
        counts = apply_trainable(model, s.trainable, self.where)
        model.config.encoder_trained = model.config.encoder_trained or any(p.requires_grad for p in model.encoder.parameters())
        model.config.backbone_trained = model.config.backbone_trained or any(
            p.requires_grad for n, p in model.backbone.named_parameters() if not is_peft_adapter_weight(n)
        )
        self.ctx.print(f"== stage {self.stage.name} ({self.stage.kind}) ==")
        self.ctx.print(format_counts(counts))

        data = load_stage_data(self.ctx.recipe.data, s.data.datasets, self.where)
        sampler = make_sampler(
            data,
            s.data,
            s.batch_size,
            seed=self.ctx.recipe.seed + 1000 * self.stage.index,
            rank=acc.process_index,
            world_size=acc.num_processes,
            max_frames_per_batch=self.ctx.recipe.data.max_frames_per_batch,
            frame_rate=FRAME_RATE,
        )
        feature_cache = self.open_feature_cache(model)
        collate = self.build_collator(model, training=True, feature_cache=feature_cache)
        evaluator = self.build_evaluator(model, feature_cache)
        total = self.total_steps(sampler.batches_per_epoch())

        params = [p for p in model.parameters() if p.requires_grad]
        opt = s.optimizer
        optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
        schedule_name = "constant_with_warmup" if s.schedule.name == "constant" else s.schedule.name
        scheduler = get_scheduler(schedule_name, optimizer, num_warmup_steps=s.schedule.warmup_steps, num_training_steps=total)
        model, optimizer = acc.prepare(model, optimizer)

        state = TrainerState(step=0, sampler=sampler.state_dict(), bad_steps=0, recipe_hash=self.ctx.recipe_hash)
        state = self.maybe_resume(model, optimizer, scheduler, sampler, state)
        sampler.load_state_dict(state.sampler)
        self.write_stage_file(done=False, step=state.step, total=total)

        logger = MetricsLog(self.stage_dir / "metrics.jsonl", acc.is_main_process, resume_step=state.step)
        batches = iter(sampler)
        progress = Progress(total, state.step, self.stage.name, acc.is_main_process)
        last_epoch = -1
        window: list[dict[str, float]] = []
        t0, rows_done = time.perf_counter(), 0
        model.train()
        def log_mixture() -> None:
            nonlocal last_epoch
            if sampler.position.epoch == last_epoch:
                return
            last_epoch = sampler.position.epoch
            mixture = {n: round(p, 4) for n, p in zip(data.names, sampler.probabilities(last_epoch).tolist())}
            msg = {"event": "mixture", "epoch": last_epoch, "temperature": sampler.temperature_at(last_epoch), "mixture": mixture}
            logger.write({"step": state.step, **msg})
            if len(data.names) > 1:
                self.ctx.print(f"epoch {last_epoch}: temperature {msg['temperature']:g}, task mixture {mixture}")

        log_mixture()
        while state.step < total:
            step_metrics, ok, rows = self.train_step(model, optimizer, batches, data, collate, opt.max_grad_norm)
            log_mixture()
            rows_done += rows
            if not ok:
                state.bad_steps += 1
                self.ctx.print(f"warning: step {state.step + 1}: non-finite loss, step skipped ({state.bad_steps} in a row)")
                if state.bad_steps >= s.max_bad_steps:
                    raise SwvError(
                        f"{self.where}: {state.bad_steps} non-finite losses in a row at step {state.step + 1}; "
                        "lower the learning rate or check the data"
                    )
                continue
            state.bad_steps = 0
            scheduler.step()
            state.step += 1
            state.samples_seen += rows
            window.append(step_metrics)
            progress.update(state.step, {**step_metrics, "lr": scheduler.get_last_lr()[0]})
            if state.step % s.log_every == 0 or state.step == total:
                elapsed = max(time.perf_counter() - t0, 1e-9)
                record = _mean(window) | {
                    "step": state.step,
                    "lr": scheduler.get_last_lr()[0],
                    "epoch": sampler.position.epoch,
                    "samples_per_s": rows_done * acc.num_processes / elapsed,
                }
                logger.write(record)
                progress.log(record)
                if self.ctx.recipe.trackers:
                    acc.log({f"{self.stage.name}/{k}": v for k, v in record.items()}, step=state.step)
                window, t0, rows_done = [], time.perf_counter(), 0
            if s.save_every and state.step % s.save_every == 0 and state.step < total:
                if evaluator is not None:
                    logger.write({"step": state.step, **evaluator(model)})
                self.checkpoint(model, optimizer, scheduler, sampler, state)
        progress.close()
        if evaluator is not None:
            result = evaluator(model)
            logger.write({"step": state.step, **result})
            self.ctx.print(f"[{self.stage.name}] held-out: " + " ".join(f"{k}={v:.4g}" for k, v in result.items()))
        self.checkpoint(model, optimizer, scheduler, sampler, state)
        self.export(model)
        self.write_stage_file(done=True, step=state.step, total=total)
        return self.export_dir

    def build_evaluator(self, model: Any, feature_cache: Any) -> Any:
        """Mean losses over the stage's ``eval_datasets`` (no SpecAugment, eval mode), or None."""
        from swv.train.data import load_stage_data, make_sampler

        s = self.stage.settings
        if not s.data.eval_datasets:
            return None
        data = load_stage_data(self.ctx.recipe.data, s.data.eval_datasets, self.where + " eval")
        sampler = make_sampler(data, s.data, s.batch_size, seed=0, rank=self.acc.process_index,
                               world_size=self.acc.num_processes, max_frames_per_batch=None, frame_rate=FRAME_RATE, shuffle=False)
        collate = self.build_collator(model, training=False, feature_cache=feature_cache)
        batches = sampler.epoch_batches(0)[self.acc.process_index :: self.acc.num_processes]

        def evaluate(model: Any) -> dict[str, float]:
            sums = torch.zeros(4, device=self.acc.device)  # loss, lm, ctc, rows
            model.eval()
            with torch.no_grad():
                for indices in batches:
                    batch = collate(data.rows(indices))
                    if not batch:
                        continue
                    inputs = {k: (v.to(self.acc.device) if torch.is_tensor(v) else v) for k, v in self.stage.model_inputs(batch).items()}
                    with self.acc.autocast():
                        out = model(**inputs)
                    n = float(batch["num_rows"])
                    for i, key in enumerate(("loss", "lm_loss", "ctc_loss")):
                        value = getattr(out, key)
                        if value is not None:
                            sums[i] += float(value) * n
                    sums[3] += n
            model.train()
            if self.acc.num_processes > 1:
                sums = self.acc.reduce(sums, reduction="sum")
            rows = max(float(sums[3]), 1.0)
            names = ("eval_loss", "eval_lm_loss", "eval_ctc_loss")
            weights = {"eval_lm_loss": self.stage.lm_weight, "eval_ctc_loss": self.stage.ctc_weight}
            return {name: float(sums[i]) / rows for i, name in enumerate(names) if weights.get(name, 1.0) > 0}

        return evaluate

    def train_step(self, model: Any, optimizer: Any, batches: Any, data: Any, collate: Any, max_norm: float | None) -> tuple[dict[str, float], bool, int]:
        """One optimizer step over ``grad_accum`` micro-batches. Returns (metrics, ok, rows)."""
        acc = self.acc
        accum = self.stage.settings.grad_accum
        sums: dict[str, float] = {}
        rows = 0
        finite = True
        for micro in range(accum):
            batch = collate(data.rows(next(batches)))
            rows += int(batch.get("num_rows", 0))
            sync = micro == accum - 1
            ctx = acc.no_sync(model) if not sync and acc.num_processes > 1 else _null()
            with ctx, acc.autocast():
                if batch:
                    inputs = {k: (v.to(acc.device) if torch.is_tensor(v) else v) for k, v in self.stage.model_inputs(batch).items()}
                    out = model(**inputs)
                    loss = out.loss if out.loss is not None else _zero_loss(model)
                else:  # every row was skipped: keep all processes in step
                    out, loss = None, _zero_loss(model)
            bad = torch.tensor(0.0 if torch.isfinite(loss).all() else 1.0, device=acc.device)
            if acc.num_processes > 1:
                bad = acc.reduce(bad, reduction="sum")
            if bad.item() > 0:
                finite = False
                break
            acc.backward(loss / accum)
            for key in ("loss", "lm_loss", "ctc_loss"):
                value = getattr(out, key, None) if out is not None else None
                if value is not None:
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) / accum
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            return {}, False, rows
        if max_norm is not None:
            acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return sums, True, rows

    # -- checkpoints, resume, export ---------------------------------------------------------
    def checkpoint(self, model: Any, optimizer: Any, scheduler: Any, sampler: Any, state: TrainerState) -> None:
        acc = self.acc
        state.sampler = sampler.state_dict()
        target = self.ckpt_dir / f"step-{state.step:07d}"
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(target, model=acc.unwrap_model(model), optimizer=optimizer, scheduler=scheduler, state=state,
                            recipe_yaml=self.ctx.recipe_yaml, rank=0, is_main=True)
        acc.wait_for_everyone()
        if not acc.is_main_process:
            save_checkpoint(target, model=acc.unwrap_model(model), optimizer=optimizer, scheduler=scheduler, state=state,
                            recipe_yaml=self.ctx.recipe_yaml, rank=acc.process_index, is_main=False)
        acc.wait_for_everyone()
        if acc.is_main_process:
            prune_checkpoints(self.ckpt_dir, self.stage.settings.keep_last)

    def maybe_resume(self, model: Any, optimizer: Any, scheduler: Any, sampler: Any, state: TrainerState) -> TrainerState:
        found = list_checkpoints(self.ckpt_dir)
        if not found:
            return state
        latest = found[-1]
        if checkpoint_recipe_hash(latest) != self.ctx.recipe_hash:
            raise UsageError(
                f"{self.ckpt_dir}: holds checkpoints of a different recipe; use another output_dir "
                "(or remove that directory) to start over"
            )
        loaded = load_checkpoint(latest, model=self.acc.unwrap_model(model), optimizer=optimizer, scheduler=scheduler, rank=self.acc.process_index)
        self.ctx.print(f"resuming stage {self.stage.name} from {latest} (step {loaded.step})")
        return loaded

    def export(self, model: Any) -> None:
        acc = self.acc
        acc.wait_for_everyone()
        if acc.is_main_process:
            acc.unwrap_model(model).save_pretrained(self.export_dir)
            self.ctx.print(f"exported {self.stage.name} -> {self.export_dir}")
        acc.wait_for_everyone()

    def write_stage_file(self, *, done: bool, step: int, total: int) -> None:
        if self.acc.is_main_process:
            atomic_write_json(
                self.stage_dir / "stage.json",
                {"name": self.stage.name, "kind": self.stage.kind, "recipe_hash": self.ctx.recipe_hash,
                 "done": done, "step": step, "total_steps": total,
                 "init_from": str(self.init_dir) if self.init_dir else None},
            )


def build_model(loaded: Any, init_dir: Path | None) -> Any:
    """The stage's starting model: an export to continue from, or fresh from the recipe.

    A fresh model's tokenizer also gets every tag the recipe's data sources carry (see
    :func:`swv.train.data.recipe_tags`) as special tokens; an export must already have them."""
    from swv.model.speechlm import SpeechLM, SpeechLMConfig
    from swv.train.data import recipe_tags

    tags = recipe_tags(loaded.recipe.data)
    torch.manual_seed(loaded.recipe.seed)
    if init_dir is not None:
        model = SpeechLM.from_pretrained(init_dir)
        known = set(getattr(model.backbone.config, "special_tokens", []))
        missing = [t for t in tags if t not in known]
        if missing:
            raise UsageError(
                f"{init_dir}: the model's tokenizer lacks the tag(s) {', '.join(missing)} used by the recipe's "
                "data (the first stage of a recipe adds every tag of its data sources; start from such a model "
                "or list them in model.backbone.special_tokens and train from the first stage)"
            )
        return model
    resolved = loaded.resolved()["model"]
    backbone = dict(resolved["backbone"])
    if tags:
        backbone["special_tokens"] = list(dict.fromkeys([*backbone.get("special_tokens", []), *tags]))
    return SpeechLM(
        SpeechLMConfig(
            encoder=resolved["encoder"],
            adapters=resolved["adapters"],
            backbone=backbone,
            system_prompt=resolved["system_prompt"],
        )
    )


def feature_cache_dir(recipe: Any) -> Path:
    return Path(recipe.data.feature_cache or Path(recipe.output_dir) / "feature_cache")


def stage_done(stage_dir: Path, recipe_hash: str) -> bool:
    try:
        info = json.loads((stage_dir / "stage.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(info.get("done")) and info.get("recipe_hash") == recipe_hash and (stage_dir / "export" / "swv_config.json").is_file()


def _zero_loss(model: Any) -> torch.Tensor:
    """A zero that still touches every trainable parameter (so all processes run backward)."""
    return torch.stack([p.sum() * 0.0 for p in model.parameters() if p.requires_grad]).sum()


def _mean(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for m in window for k in m}
    return {k: sum(m[k] for m in window if k in m) / max(1, sum(1 for m in window if k in m)) for k in sorted(keys)}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class MetricsLog:
    """``metrics.jsonl``: one JSON object per log event, appended and flushed."""

    def __init__(self, path: Path, enabled: bool, resume_step: int) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():  # drop records past the step we resume from
                kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= resume_step]
                path.write_text("".join(k + "\n" for k in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (main process only)."""

    def __init__(self, total: int, start: int, name: str, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True)
        self.total = total
        self.name = name

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=True)

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled and self.bar is None:
            parts = [f"{k}={record[k]:.4g}" for k in ("loss", "lm_loss", "ctc_loss", "lr", "samples_per_s") if k in record]
            print(f"[{self.name}] step {record['step']}/{self.total} " + " ".join(parts), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

