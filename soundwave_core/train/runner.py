"""One training stage under accelerate: model, trainable set, data, optimisation loop,
checkpoints, metrics and the per-module export."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from swv.backbones.base import is_peft_adapter_weight
from swv.core.config import CONFIG_NAME
from swv.core.errors import InputError, SwvError, UsageError
from swv.core.io import (
    append_durably,
    atomic_write_json,
    atomic_write_text,
    inside,
    write_errors,
    write_failure,
)
from swv.core.metrics_log import (
    EVAL_PREFIX,
    GRAD_NORM,
    LEARNING_RATE,
    METRICS_FILE,
    THROUGHPUT,
    TOTAL_LOSS,
    read_metrics_records,
)
from swv.core.progress import format_duration
from swv.data.loader import BatchLog, default_num_workers, next_batch, training_loader
from swv.data.sampler import sequential_batches
from swv.data.stage_data import StageDataset, load_stage_data, make_sampler
from swv.train.checkpoint import (
    TrainableWeightsHooks,
    TrainerState,
    checkpoint_recipe,
    checkpoint_recipe_hash,
    latest_intact_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from swv.train.frozen_cast import FrozenCast
from swv.train.identity import describe_differences, identity_diff, stage_length
from swv.train.sharded import whole_model
from swv.train.stages import CTC, LM, Stage
from swv.train.trainable import (
    ChainLink,
    apply_trainable,
    format_counts,
    param_groups,
    trainable_groups,
    unreached_modules,
)

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from swv.data.collate import SpeechCollator
    from swv.data.feature_cache import FeatureCache
    from swv.data.sampler import MixtureSampler, RowSource
    from swv.model.speechlm import SpeechLM
    from swv.recipes.loader import LoadedRecipe
    from swv.recipes.schema import Recipe, StageSettings


@dataclass
class RunContext:
    """What every stage of one ``swv train`` invocation shares."""

    loaded: LoadedRecipe
    recipe_hash: str
    recipe_yaml: str
    output_dir: Path
    accelerator: Accelerator
    #: resume a stage even if its data files changed since its checkpoint (``--accept-data-change``)
    accept_data_change: bool = False
    #: the accelerator's DDP settings; each stage sets ``find_unused_parameters`` before wrapping its model
    ddp: DistributedDataParallelKwargs | None = None

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe

    def print(self, *args: Any) -> None:
        if self.accelerator.is_main_process:
            print(*args, flush=True)


class StageRunner:
    """One stage: trains it from ``init_dir`` (or resumes it from its latest checkpoint) to its
    last step. ``reopened``: the stage had finished with another length (``max_steps``,
    ``epochs``) and is continued from its last checkpoint, which must exist."""

    def __init__(self, ctx: RunContext, stage: Stage, init_dir: Path | None, reopened: bool = False) -> None:
        self.ctx = ctx
        self.stage = stage
        self.init_dir = init_dir
        self.reopened = reopened
        self.stage_dir = inside(ctx.output_dir, stage.name, f"stages[{stage.index}].name")
        self.ckpt_dir = self.stage_dir / "checkpoints"
        self.export_dir = self.stage_dir / "export"
        self.acc: Accelerator = ctx.accelerator
        self.where = stage.where
        self.frozen_cast: FrozenCast | None = None

    # -- set-up ---------------------------------------------------------------------------
    def build_model(self) -> SpeechLM:
        model = build_model(self.ctx.loaded, self.init_dir)
        if self.init_dir is not None:
            for line in ignored_model_settings(model.config.to_dict(), self.ctx.loaded.model_components):
                self.ctx.print(f"warning: stage {self.stage.name} starts from {self.init_dir}, whose model it trains as "
                               f"saved: the recipe's {line}")
        return model

    def open_feature_cache(self, model: SpeechLM) -> FeatureCache | None:
        """The recipe's feature cache, if the encoder is frozen and the cache matches it."""
        from swv.data.feature_cache import FeatureCache

        data = self.ctx.recipe.data
        if not data.use_feature_cache or any(p.requires_grad for p in model.encoder.parameters()):
            return None
        cache = FeatureCache.open(feature_cache_dir(self.ctx.recipe), model.encoder)
        if cache is not None:
            masks = "data.cached_augment masks" if data.cached_augment.enabled else "SpecAugment does not apply to"
            self.ctx.print(f"using the feature cache at {cache.directory} ({len(cache)} clips; {masks} cached clips)")
        return cache

    def build_collator(self, model: SpeechLM, training: bool, feature_cache: FeatureCache | None = None) -> SpeechCollator:
        from swv.data.collate import SpeechCollator
        from swv.model.prompts import PromptBuilder

        recipe = self.ctx.recipe
        prompts = None
        if self.stage.mode == "lm":
            prompts = PromptBuilder(model.tokenizer, model.config.system_prompt, model.backbone.audio_token,
                                    model.config.instructions)
        skip = {name for name, spec in recipe.data.datasets.items() if spec.on_error == "skip"}
        return SpeechCollator(
            model.encoder,
            model.tokenizer,
            mode=self.stage.mode,
            prompts=prompts,
            spec_augment=recipe.data.spec_augment if training else None,
            cached_augment=recipe.data.cached_augment.as_spec_augment() if training else None,
            skip_sources=skip,
            with_ctc_targets=self.stage.needs_ctc_targets,
            feature_cache=feature_cache,
            clip_classes=model.clip_classes() if training else None,
        )

    def total_steps(self, batches_per_epoch: int) -> int:
        return stage_total_steps(self.stage.settings, batches_per_epoch)

    # -- the stage, in named steps -------------------------------------------------------------
    def run(self) -> Path:
        """Train the stage to its last step (resuming from its latest checkpoint), evaluate,
        checkpoint and export; returns the export directory."""
        model = self.prepare_model()
        data, sampler = self.training_data(model)
        feature_cache = self.open_feature_cache(model)
        collate = self.build_collator(model, training=True, feature_cache=feature_cache)
        evaluator = self.build_evaluator(model, feature_cache)
        total = self.total_steps(sampler.batches_per_epoch())
        self.frozen_cast = self.cast_frozen(model)
        optimizer, scheduler = self.build_optimizer(model, total)
        self.acc.free_memory()  # save_state saves every prepared object: forget the previous stage's
        self.configure_deepspeed()
        self.configure_ddp(model, data)
        model, optimizer = self.acc.prepare(model, optimizer)
        hooks = TrainableWeightsHooks(self.acc)
        try:
            state = TrainerState(step=0, sampler=sampler.state_dict(), bad_steps=0, recipe_hash=self.ctx.recipe_hash,
                                 data=self.data_fingerprints(), total_steps=total)
            state = self.maybe_resume(scheduler, state)
            sampler.load_state_dict(state.sampler)
            self.write_stage_file(done=False, step=state.step, total=total)
            loop = _Loop(model, optimizer, scheduler, data, sampler, collate, evaluator, state, total,
                         MetricsLog(self.stage_dir / METRICS_FILE, self.acc.is_main_process, resume_step=state.step),
                         position=dict(state.sampler), epoch=int(state.sampler["epoch"]))
            self.train_loop(loop)
            self.finish(loop)
        finally:
            hooks.remove()
        return self.export_dir

    @property
    def stage_seed(self) -> int:
        """The seed of the stage's batch order and SpecAugment masks."""
        return stage_seed(self.ctx.recipe, self.stage.index)

    def configure_deepspeed(self) -> None:
        """Under DeepSpeed (not tested without GPUs), the engine takes the micro-batch and the
        accumulation from its config (it scales the loss and steps at accumulation boundaries
        itself): give it the stage's."""
        plugin = self.acc.state.deepspeed_plugin
        if plugin is None:
            return
        s = self.stage.settings
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = s.batch_size // self.acc.num_processes
        plugin.deepspeed_config["gradient_accumulation_steps"] = s.grad_accum

    def configure_ddp(self, model: SpeechLM, data: RowSource) -> None:
        """DDP's ``find_unused_parameters`` only when a trainable module may get no gradient in
        this stage (:func:`~swv.train.trainable.unreached_modules`; a stage with text-only rows
        may draw a batch without audio): the search costs a graph walk every step and warns
        whenever it finds nothing."""
        if self.ctx.ddp is None:
            return
        chain = [ChainLink(name, adapter.produces_ctc, frozenset(adapter.aux_loss_names))
                 for name, adapter in model.adapters.items()]
        weighted = {name for name, weight in self.stage.settings.losses.items() if weight > 0}
        speech_only = isinstance(data, StageDataset) and not bool((data.durations < 0).any())
        unreached = unreached_modules(trainable_groups(model), chain, weighted, self.stage.run_backbone,
                                      text_only_rows=not speech_only)
        self.ctx.ddp.find_unused_parameters = bool(unreached)
        if self.acc.num_processes > 1:
            text = "" if speech_only else ": the stage's data has rows without audio"
            why = f" ({', '.join(unreached)} may get no gradient{text})" if unreached else ""
            self.ctx.print(f"[{self.stage.name}] DDP find_unused_parameters={bool(unreached)}{why}")

    def cast_frozen(self, model: SpeechLM) -> FrozenCast | None:
        """Under ``precision: bf16`` (one process or DDP), the frozen linear and conv weights
        held in bf16 for the stage, their float32 sources kept for the export
        (:mod:`swv.train.frozen_cast`); ``None`` otherwise."""
        sharded = (DistributedType.DEEPSPEED, DistributedType.FSDP)
        if self.ctx.recipe.precision != "bf16" or self.acc.distributed_type in sharded:
            return None
        cast = FrozenCast(model, torch.bfloat16)
        self.ctx.print(f"[{self.stage.name}] {len(cast)} frozen weight tensor(s) held in bf16 (exported from float32)")
        return cast

    def num_workers(self) -> int:
        configured = self.ctx.recipe.data.num_workers
        return default_num_workers(self.acc.num_processes) if configured is None else configured

    def prepare_model(self) -> SpeechLM:
        """The starting model with the stage's trainable set applied (and recorded in its config)."""
        model = self.build_model()
        counts = apply_trainable(model, self.stage.settings.trainable, self.where)
        model.config.encoder_trained = model.config.encoder_trained or any(p.requires_grad for p in model.encoder.parameters())
        model.config.backbone_trained = model.config.backbone_trained or any(
            p.requires_grad for n, p in model.backbone.named_parameters() if not is_peft_adapter_weight(n)
        )
        self.ctx.print(f"== stage {self.stage.name} ({self.stage.kind}) ==")
        self.ctx.print(format_counts(counts))
        return model

    def training_data(self, model: SpeechLM) -> tuple[RowSource, MixtureSampler]:
        s = self.stage.settings
        data = load_stage_data(self.ctx.recipe.data, s.data.datasets, self.where,
                               seed=self.stage_seed, allow_streaming=True)
        sampler = make_sampler(
            data,
            s.data,
            s.batch_size,
            seed=self.stage_seed,
            rank=self.acc.process_index,
            world_size=self.acc.num_processes,
            max_frames_per_batch=self.ctx.recipe.data.max_frames_per_batch,
            frame_rate=model.encoder.frame_rate,
        )
        return data, sampler

    def build_optimizer(self, model: SpeechLM, total: int) -> tuple[torch.optim.Optimizer, LRScheduler]:
        from transformers import get_scheduler

        s = self.stage.settings
        opt = s.optimizer
        params = param_groups(model, opt.lr, opt.lr_scale, f"{self.where}: optimizer.lr_scale")
        optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
        schedule_name = "constant_with_warmup" if s.schedule.name == "constant" else s.schedule.name
        scheduler = get_scheduler(schedule_name, optimizer, num_warmup_steps=s.schedule.warmup_steps, num_training_steps=total)
        return optimizer, scheduler

    def train_loop(self, loop: _Loop) -> None:
        """Optimizer steps up to ``loop.total``: skip non-finite steps, log, evaluate and checkpoint."""
        s = self.stage.settings
        progress = Progress(loop.total, loop.state.step, self.stage.name, self.acc.is_main_process)
        workers = self.num_workers()
        self.ctx.print(f"[{self.stage.name}] data loader: {workers} worker process(es) per training process")
        loader = training_loader(loop.data, loop.sampler, loop.collate, seed=self.stage_seed, num_workers=workers,
                                 pin_memory=self.acc.device.type == "cuda")
        loop.batches = iter(loader)
        if self.ctx.recipe.data.log_batches:
            loop.batch_log = BatchLog(self.stage_dir / f"batches-rank{self.acc.process_index}.jsonl", loop.state.step)
        window = _Window()
        loop.model.train()
        self.log_mixture(loop)
        while loop.state.step < loop.total:
            metrics, ok, rows = self.train_step(loop, s.optimizer.max_grad_norm)
            self.log_mixture(loop)
            window.rows += rows
            if not ok:
                self.count_bad_step(loop.state)
                continue
            loop.state.bad_steps = 0
            loop.scheduler.step()
            loop.state.step += 1
            loop.state.samples_seen += rows
            window.metrics.append(metrics)
            progress.update(loop.state.step, {**metrics, "lr": loop.scheduler.get_last_lr()[0]})
            if loop.state.step % s.log_every == 0 or loop.state.step == loop.total:
                progress.log(self.log_window(loop, window))
                window = _Window()
            if s.save_every and loop.state.step % s.save_every == 0 and loop.state.step < loop.total:
                if loop.evaluator is not None:
                    self.log_held_out(loop, loop.evaluator(loop.model))
                self.checkpoint(loop)
        loop.batches = None  # stops the loader's workers
        progress.close()

    def log_mixture(self, loop: _Loop) -> None:
        """Log the task mixture once per epoch (when training enters a new one)."""
        epoch = loop.epoch
        if epoch == loop.logged_epoch:
            return
        loop.logged_epoch = epoch
        mixture = {n: round(p, 4) for n, p in zip(loop.data.names, loop.sampler.probabilities(epoch).tolist())}
        temperature = loop.sampler.temperature_at(epoch)
        loop.logger.write({"step": loop.state.step, "event": "mixture", "epoch": epoch, "temperature": temperature,
                           "mixture": mixture})
        self.track({"mixture": mixture, "temperature": temperature}, loop.state.step)
        if len(loop.data.names) > 1:
            self.ctx.print(f"epoch {epoch}: temperature {temperature:g}, task mixture {mixture}")

    def count_bad_step(self, state: TrainerState) -> None:
        """A skipped step (non-finite loss); too many in a row stop the stage."""
        state.bad_steps += 1
        self.ctx.print(f"warning: step {state.step + 1}: non-finite loss, step skipped ({state.bad_steps} in a row)")
        if state.bad_steps >= self.stage.settings.max_bad_steps:
            raise SwvError(
                f"{self.where}: {state.bad_steps} non-finite losses in a row at step {state.step + 1}; "
                "lower the learning rate or check the data"
            )

    def log_window(self, loop: _Loop, window: _Window) -> dict[str, Any]:
        """Mean metrics of the steps since the last log line, to metrics.jsonl and the trackers."""
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        record = self.mean_over_processes(_mean(window.metrics)) | {
            "step": loop.state.step,
            LEARNING_RATE: loop.scheduler.get_last_lr()[0],
            "epoch": loop.epoch,
            THROUGHPUT: window.rows * self.acc.num_processes / elapsed,
        }
        loop.logger.write(record)
        self.track(record, loop.state.step)
        return record

    def log_held_out(self, loop: _Loop, result: dict[str, float]) -> None:
        """Held-out losses to metrics.jsonl and the trackers."""
        loop.logger.write({"step": loop.state.step, **result})
        self.track(result, loop.state.step)

    def track(self, values: dict[str, Any], step: int) -> None:
        """The numeric ``values`` to the recipe's trackers, as ``<stage>/<name>`` at ``step``."""
        if self.ctx.recipe.trackers:
            from swv.train.tracking import numeric

            self.acc.log(numeric(values, self.stage.name), step=step)

    def mean_over_processes(self, local: dict[str, float]) -> dict[str, float]:
        """Each loss averaged over the processes that report it (each process's value is the
        mean over its share of the global batches: the processes' mean is the global mean)."""
        if self.acc.num_processes == 1:
            return local
        keys = ["loss", *(f"{name}_loss" for name in (LM, CTC, *sorted(self.stage.aux_losses)))]
        sums = torch.tensor([[local.get(k, 0.0) for k in keys], [float(k in local) for k in keys]],
                            dtype=torch.float64, device=self.acc.device)
        sums = self.acc.reduce(sums, reduction="sum")
        return {k: float(sums[0, i] / sums[1, i]) for i, k in enumerate(keys) if float(sums[1, i]) > 0}

    def finish(self, loop: _Loop) -> None:
        """Held-out losses, the last checkpoint, the export and the stage file."""
        result: dict[str, float] = {}
        if loop.evaluator is not None:
            result = loop.evaluator(loop.model)
            self.log_held_out(loop, result)
            self.ctx.print(f"[{self.stage.name}] held-out: " + " ".join(f"{k}={v:.4g}" for k, v in result.items()))
        self.checkpoint(loop)
        self.export(loop.model, self.training_record(loop.state.step, result))
        self.write_stage_file(done=True, step=loop.state.step, total=loop.total)

    def build_evaluator(self, model: SpeechLM, feature_cache: FeatureCache | None) -> HeldOutEvaluator | None:
        """Mean losses over the stage's ``eval_datasets`` (no SpecAugment, eval mode), or None."""
        s = self.stage.settings
        if not s.data.eval_datasets:
            return None
        data = load_stage_data(self.ctx.recipe.data, s.data.eval_datasets, self.where + " eval")
        collate = self.build_collator(model, training=False, feature_cache=feature_cache)
        per_process = s.batch_size // self.acc.num_processes
        batches = sequential_batches(sum(data.sizes), per_process)[self.acc.process_index :: self.acc.num_processes]
        return HeldOutEvaluator(self.stage, self.acc, data, collate, batches)

    def train_step(self, loop: _Loop, max_norm: float | None) -> tuple[dict[str, float], bool, int]:
        """One optimizer step over ``grad_accum`` global micro-batches (this process's share of
        each, from ``loop.batches``; ``loop.position`` and ``loop.epoch`` follow them). Returns
        (metrics, ok, rows): the weighted ``loss`` and each unweighted ``<name>_loss``, averaged
        over micro-batches.

        Each process's loss is a mean over its share; it is weighted by the share's part of the
        global batch (1 when the batch splits evenly), so that the processes' mean gradient is
        the gradient of the global batch's mean loss."""
        acc, model, optimizer = self.acc, loop.model, loop.optimizer
        accum = self.stage.settings.grad_accum
        divisor = 1 if acc.distributed_type == DistributedType.DEEPSPEED else accum  # DeepSpeed divides itself
        sums: dict[str, float] = {}
        rows = 0
        finite = True
        for micro in range(accum):
            assert loop.batches is not None
            loaded = next_batch(loop.batches)
            loop.position, loop.epoch = loaded["position"], loaded["epoch"]
            if loop.batch_log is not None:
                loop.batch_log.write(loop.state.step + 1, micro, loaded["indices"])
            weight = loaded["rows"] * acc.num_processes / loaded["global_rows"]
            batch = loaded["inputs"]
            rows += int(batch.get("num_rows", 0))
            sync = micro == accum - 1
            ctx = acc.no_sync(model) if not sync and acc.num_processes > 1 else contextlib.nullcontext()
            with ctx, acc.autocast():
                # the model's unweighted losses; none when every row of the batch was skipped
                losses = run_stage_batch(self.stage, acc.device, model, batch) if batch else {}
                total = self.stage.total_loss(losses)
                loss = total if total is not None else _zero_loss(model)  # keep all processes in step
            bad = torch.tensor(0.0 if torch.isfinite(loss).all() else 1.0, device=acc.device)
            if acc.num_processes > 1:
                bad = acc.reduce(bad, reduction="sum")
            if bad.item() > 0:
                finite = False
                break
            acc.backward((loss if weight == 1 else loss * weight) / divisor)
            named = {"loss": total} if total is not None else {}
            named.update({f"{name}_loss": value for name, value in losses.items()})
            for key, value in named.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / accum
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            return {}, False, rows
        # the norm before clipping (measured without clipping when max_grad_norm is null), over all
        # the parameters: accelerate recognises an FSDP model by its whole list (FSDP1 then clips
        # over every shard); frozen ones have no gradient and count for nothing
        norm = acc.clip_grad_norm_(model.parameters(), max_norm if max_norm is not None else math.inf)
        if norm is not None and math.isfinite(float(norm)):  # DeepSpeed clips in its own step: None
            sums[GRAD_NORM] = float(norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return sums, True, rows

    # -- checkpoints, resume, export ---------------------------------------------------------
    def checkpoint(self, loop: _Loop) -> None:
        """Every process: the stage's state after ``loop.state.step`` (the sampler position of
        the last batch consumed, not of the loader's prefetching) through accelerate."""
        loop.state.sampler = dict(loop.position)
        target = self.ckpt_dir / f"step-{loop.state.step:07d}"
        save_checkpoint(self.acc, target, scheduler=loop.scheduler, state=loop.state, recipe_yaml=self.ctx.recipe_yaml)
        if self.acc.is_main_process:
            prune_checkpoints(self.ckpt_dir, self.stage.settings.keep_last)
        self.acc.wait_for_everyone()

    def maybe_resume(self, scheduler: LRScheduler, state: TrainerState) -> TrainerState:
        latest, skipped = latest_intact_checkpoint(self.ckpt_dir)
        for path, reason in skipped:
            self.ctx.print(f"warning: skipping checkpoint {path}: {reason}")
        if latest is None:
            if skipped:
                raise InputError(
                    f"{self.ckpt_dir}: no intact checkpoint to resume from (every one is damaged, see the warnings "
                    "above); move that directory aside, or pass --restart, to start the stage over"
                )
            if self.reopened:
                raise UsageError(f"stage {self.stage.name} finished, but {self.ckpt_dir} holds no checkpoint to continue "
                                 "it from; pass --restart to train it from the start")
            return state
        self.check_recipe(latest)
        loaded = load_checkpoint(self.acc, latest, scheduler=scheduler)
        self.check_data(latest, loaded.data, state.data)
        loaded.data = state.data  # later checkpoints record the data trained on from now on
        self.ctx.print(f"resuming stage {self.stage.name} from {latest} (step {loaded.step})")
        self.check_length(latest, loaded, state.total_steps, scheduler)
        return loaded

    def check_recipe(self, checkpoint: Path) -> None:
        """Refuse a checkpoint written with another recipe (its identity, see
        :mod:`swv.train.identity`), naming the fields that differ. A checkpoint whose recorded
        recipe has the same identity but another digest (written by an older swv) is accepted."""
        if checkpoint_recipe_hash(checkpoint) == self.ctx.recipe_hash:
            return
        recorded = checkpoint_recipe(checkpoint)
        differences = ["(its recipe.yaml is unreadable)"] if recorded is None else identity_diff(recorded, self.ctx.loaded.resolved())
        if differences:
            raise UsageError(
                f"{self.ckpt_dir}: holds checkpoints of a different recipe ({describe_differences(differences)}); "
                "pass --restart to start the stage over, or use another output_dir"
            )

    def check_length(self, checkpoint: Path, loaded: TrainerState, total: int, scheduler: LRScheduler) -> None:
        """A stage whose length changed since ``checkpoint``: past the new end is an error;
        otherwise the learning-rate schedule (built for the new length) continues from the
        checkpoint's step, so the next step uses the new schedule's rate at that step."""
        if loaded.step > total:
            raise UsageError(
                f"{self.where}: the checkpoint {checkpoint} is at step {loaded.step}, past the stage's new length of "
                f"{total} steps; raise max_steps (or epochs), or pass --restart to start the stage over"
            )
        if loaded.total_steps == total:
            return
        scheduler.last_epoch = loaded.step - 1
        scheduler.step()  # sets the optimizer's rates to the new schedule's at loaded.step
        if loaded.total_steps:  # 0: a checkpoint of an older swv, which did not record its length
            self.ctx.print(f"stage {self.stage.name}: length changed from {loaded.total_steps} to {total} steps; the "
                           f"learning-rate schedule is rebuilt for {total} steps and continues at step {loaded.step} "
                           f"(lr {scheduler.get_last_lr()[0]:.4g})")
        loaded.total_steps = total

    def data_fingerprints(self) -> dict[str, dict[str, Any]]:
        """The fingerprints of the stage's file-backed sources (training and held-out)."""
        from swv.data.fingerprint import data_fingerprints

        s = self.stage.settings.data
        return data_fingerprints(self.ctx.recipe.data, [*s.datasets, *s.eval_datasets])

    def check_data(self, checkpoint: Path, recorded: dict[str, Any], current: dict[str, dict[str, Any]]) -> None:
        """Refuse to resume from ``checkpoint`` when a data source changed since it was written
        (one line, the first change), unless ``--accept-data-change`` was given (a warning)."""
        from swv.data.fingerprint import data_changes

        changes = data_changes(recorded, current)
        if not changes:
            return
        more = f" and {len(changes) - 1} more source(s)" if len(changes) > 1 else ""
        if self.ctx.accept_data_change:
            for change in changes:
                self.ctx.print(f"warning: {change} changed since {checkpoint}; resuming on the new data "
                               "(--accept-data-change)")
            return
        raise InputError(
            f"{changes[0]}{more} changed since the checkpoint {checkpoint} was written; restore the data, or "
            "pass --accept-data-change to resume on the changed data"
        )

    def training_record(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        """What this stage did, for the export's model card (``SpeechLMConfig.training``)."""
        specs = self.ctx.recipe.data.datasets
        names = [*self.stage.settings.data.datasets, *self.stage.settings.data.eval_datasets]
        return {
            "stage": self.stage.name,
            "kind": self.stage.kind,
            "recipe": self.ctx.loaded.source.name,
            "steps": step,
            "datasets": {n: specs[n].manifest or f"{specs[n].hf_dataset} ({specs[n].split})" for n in names},
            "metrics": metrics,
        }

    def unsharded_model(self) -> SpeechLM:
        """A model of the stage's structure (its starting model with the stage's trainable set:
        LoRA added where the stage adds it), to hold weights gathered from shards."""
        model = self.build_model()
        apply_trainable(model, self.stage.settings.trainable, self.where)
        return model

    def export(self, model: nn.Module, record: dict[str, Any]) -> None:
        """Every process: save the model to the stage's export directory, with ``record``
        replacing this stage's entry in its training record. Sharded parameters (FSDP) are
        gathered whole first (:func:`~swv.train.sharded.whole_model`)."""
        acc = self.acc
        acc.wait_for_everyone()
        whole = whole_model(model, acc.unwrap_model(model), self.unsharded_model, acc.is_main_process)
        if whole is not None:
            earlier = [r for r in whole.config.training or [] if r.get("stage") != self.stage.name]
            whole.config.training = [*earlier, record]
            # the frozen weights' float32 sources, when a bf16 stage held them cast (never under FSDP)
            source = self.frozen_cast.restored() if self.frozen_cast is not None else contextlib.nullcontext()
            try:
                with source:
                    whole.save_pretrained(self.export_dir)
            except write_errors() as exc:  # save_pretrained removed its temporary directory
                raise write_failure(self.export_dir, "the export", exc) from exc
            self.ctx.print(f"exported {self.stage.name} -> {self.export_dir}")
        acc.wait_for_everyone()

    def write_stage_file(self, *, done: bool, step: int, total: int) -> None:
        """``stage.json``: the stage's progress, length and start (``init_step``: the step of the
        previous stage's export when this stage first started from it)."""
        if self.acc.is_main_process:
            previous = stage_record(self.stage_dir)
            init_step = stage_record(self.init_dir.parent).get("step") if self.init_dir else None
            atomic_write_json(
                self.stage_dir / "stage.json",
                {"name": self.stage.name, "kind": self.stage.kind, "recipe_hash": self.ctx.recipe_hash,
                 "done": done, "step": step, "total_steps": total, "length": stage_length(self.stage.settings),
                 "init_from": str(self.init_dir) if self.init_dir else None,
                 "init_step": previous.get("init_step", init_step)},
            )


@dataclass
class _Loop:
    """What the training loop of one stage works on."""

    model: nn.Module  # the SpeechLM, wrapped by accelerate
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    data: RowSource
    sampler: MixtureSampler
    collate: SpeechCollator
    evaluator: HeldOutEvaluator | None
    state: TrainerState
    total: int
    logger: MetricsLog
    position: dict[str, int]  # the sampler position after the last batch training consumed
    epoch: int  # the epoch of that batch
    batches: Iterator[dict[str, Any]] | None = None  # the data loader's iterator while training
    batch_log: BatchLog | None = None
    logged_epoch: int = -1


@dataclass
class _Window:
    """Steps since the last log line."""

    metrics: list[dict[str, float]] = field(default_factory=list)
    rows: int = 0
    start: float = field(default_factory=time.perf_counter)


def run_stage_batch(stage: Stage, device: torch.device, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Move the stage's inputs of ``batch`` to ``device``, run ``model`` and return its
    unweighted losses by name (``lm``, ``ctc``, auxiliary names)."""
    inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in stage.model_inputs(batch).items()}
    return stage.losses(model(**inputs))


class HeldOutEvaluator:
    """Mean held-out losses of a stage: ``eval_loss`` (the stage's weighted total) and each
    unweighted ``eval_<name>_loss`` the model reported, averaged over the rows of the batches
    that reported it (summed over processes)."""

    def __init__(self, stage: Stage, acc: Accelerator, data: StageDataset, collate: SpeechCollator,
                 batches: list[list[int]]) -> None:
        self.stage = stage
        self.acc = acc
        self.data = data
        self.collate = collate
        self.batches = batches
        #: every loss name the model may report (fixed order: the same tensor layout on every process)
        self.names = [LM, CTC, *sorted(stage.aux_losses)]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        keys = ["loss", *self.names]
        sums = torch.zeros(2, len(keys), device=self.acc.device)  # [value * rows, rows] per key
        model.eval()
        with torch.no_grad():
            for indices in self.batches:
                batch = self.collate(self.data.rows(indices))
                if not batch:
                    continue
                with self.acc.autocast():
                    losses = run_stage_batch(self.stage, self.acc.device, model, batch)
                total = self.stage.total_loss(losses)
                found = {"loss": total, **losses} if total is not None else losses
                rows = float(batch["num_rows"])
                for i, key in enumerate(keys):
                    if found.get(key) is not None:
                        sums[0, i] += float(found[key]) * rows
                        sums[1, i] += rows
        model.train()
        if self.acc.num_processes > 1:
            sums = self.acc.reduce(sums, reduction="sum")
        names = [EVAL_PREFIX + TOTAL_LOSS, *(f"{EVAL_PREFIX}{name}_loss" for name in self.names)]
        return {name: float(sums[0, i] / sums[1, i]) for i, name in enumerate(names) if float(sums[1, i]) > 0}


def stage_seed(recipe: Recipe, index: int) -> int:
    """The seed of stage ``index``'s batch order (its mixture sampler) and SpecAugment masks."""
    return recipe.seed + 1000 * index


def stage_total_steps(settings: StageSettings, batches_per_epoch: int) -> int:
    """The stage's optimizer steps: ``max_steps``, or ``epochs`` of ``batches_per_epoch`` global
    batches, ``grad_accum`` batches per step."""
    if settings.max_steps is not None:
        return settings.max_steps
    assert settings.epochs is not None
    return max(1, math.ceil(settings.epochs * batches_per_epoch / settings.grad_accum))


def build_model(loaded: LoadedRecipe, init_dir: Path | None, tags: list[str] | None = None) -> SpeechLM:
    """The stage's starting model: an export to continue from, or fresh from the recipe.

    A fresh model's tokenizer also gets every tag the recipe's data sources carry (see
    :func:`swv.data.stage_data.recipe_tags`; ``tags`` when given, e.g. by a plan that does not
    load the data) as special tokens; an export must already have them."""
    from swv.data.stage_data import recipe_tags
    from swv.model.speechlm import SpeechLM, SpeechLMConfig

    tags = recipe_tags(loaded.recipe.data) if tags is None else tags
    torch.manual_seed(loaded.recipe.seed)
    if init_dir is not None:
        # remote code only if the recipe the user wrote enables it, never the export's own config
        trusted = bool(loaded.recipe.model.backbone.args().get("trust_remote_code", False))
        model = SpeechLM.from_pretrained(init_dir, trust_remote_code=trusted)
        model.config.instructions, model.config.generation = recipe_prompting(loaded.recipe)
        known = set(model.backbone.special_tokens)
        missing = [t for t in tags if t not in known]
        if missing:
            raise UsageError(
                f"{init_dir}: the model's tokenizer lacks the tag(s) {', '.join(missing)} used by the recipe's "
                "data (the first stage of a recipe adds every tag of its data sources; start from such a model "
                "or list them in model.backbone.special_tokens and train from the first stage)"
            )
        return model
    components = loaded.model_components
    backbone = components.backbone
    if tags:
        backbone = backbone.replace(special_tokens=list(dict.fromkeys([*backbone.get("special_tokens", []), *tags])))
    instructions, generation = recipe_prompting(loaded.recipe)
    return SpeechLM(
        SpeechLMConfig(
            encoder=components.encoder,
            adapters=list(components.adapters),
            backbone=backbone,
            system_prompt=loaded.recipe.model.system_prompt,
            instructions=instructions,
            generation=generation,
        )
    )


#: component settings that say where weights come from or how they are held, not what the model computes
LOCATION_FIELDS = frozenset({"path", "revision", "gguf_file", "random_init", "tokenizer", "trust_remote_code",
                             "special_tokens", "dtype", "attn_implementation", "gradient_checkpointing"})


def ignored_model_settings(export_config: dict[str, Any], components: Any) -> list[str]:
    """The recipe's model settings that a stage starting from an export does not use: one line per
    setting whose value differs from the export's (``model.adapters[1].posterior_temperature is 2.0,
    the export's 1.0``); adapters compared by position. Where the weights come from
    (:data:`LOCATION_FIELDS`) is not compared."""
    pairs = [("encoder", export_config.get("encoder") or {}, components.encoder.to_dict()),
             ("backbone", export_config.get("backbone") or {}, components.backbone.to_dict())]
    saved, wanted = export_config.get("adapters") or [], [a.to_dict() for a in components.adapters]
    if [a.get("name") for a in saved] != [a["name"] for a in wanted]:
        return [f"model.adapters are {[a['name'] for a in wanted]}, the export's {[a.get('name') for a in saved]}"]
    pairs += [(f"adapters[{i}]", old, new) for i, (old, new) in enumerate(zip(saved, wanted))]
    return [f"model.{where}.{key} is {new[key]!r}, the export's {old.get(key)!r}"
            for where, old, new in pairs for key in sorted(new)
            if key not in LOCATION_FIELDS and key in old and old[key] != new[key]]


def recipe_prompting(recipe: Recipe) -> tuple[dict[str, str], dict[str, Any]]:
    """The recipe's default-instruction table and decoding defaults, as saved with the model."""
    from swv.model.prompts import instruction_table

    return instruction_table(recipe.model.instructions), recipe.model.generation.model_dump()


def feature_cache_dir(recipe: Recipe) -> Path:
    return Path(recipe.data.feature_cache or Path(recipe.output_dir) / "feature_cache")


def stage_record(stage_dir: Path) -> dict[str, Any]:
    """The stage's ``stage.json`` (empty if missing or unreadable)."""
    try:
        info = json.loads((stage_dir / "stage.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def stage_done(stage_dir: Path, recipe_hash: str) -> bool:
    """The stage finished with this recipe (its identity: possibly another length) and has its export."""
    info = stage_record(stage_dir)
    return bool(info.get("done")) and info.get("recipe_hash") == recipe_hash and (stage_dir / "export" / CONFIG_NAME).is_file()


def _zero_loss(model: nn.Module) -> torch.Tensor:
    """A zero that still touches every trainable parameter (so all processes run backward)."""
    return torch.stack([p.sum() * 0.0 for p in model.parameters() if p.requires_grad]).sum()


def _mean(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for m in window for k in m}
    return {k: sum(m[k] for m in window if k in m) / max(1, sum(1 for m in window if k in m)) for k in sorted(keys)}


class MetricsLog:
    """``metrics.jsonl``: one JSON object per log event, appended and flushed. On resume the
    records past the resumed step are dropped, and so is a line torn by a kill or a full disk
    (reported); the file is rewritten atomically."""

    def __init__(self, path: Path, enabled: bool, resume_step: int) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():  # drop records past the step we resume from
                records = read_metrics_records(path)
                kept = [json.dumps(r) + "\n" for r in records if r.get("step", 0) <= resume_step]
                atomic_write_text(path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line; a line that cannot be written whole is not kept."""
        if self.enabled:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                append_durably(fd, (json.dumps(record) + "\n").encode("utf-8"), self.path, "the metrics")
            finally:
                os.close(fd)


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (main process only), each with the
    time since the stage (re)started and the time left at the step rate seen since then."""

    def __init__(self, total: int, start: int, name: str, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True)
        self.total = total
        self.name = name
        self.start = start
        self.started = time.perf_counter()

    def timing(self, step: int) -> str:
        """``elapsed=... eta=...``: the ETA from the steps done since the start (``?`` before one)."""
        elapsed = time.perf_counter() - self.started
        done = step - self.start
        eta = format_duration(elapsed / done * (self.total - step)) if done > 0 else "?"
        return f"elapsed={format_duration(elapsed)} eta={eta}"

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=True)

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled and self.bar is None:
            parts = [f"{k}={record[k]:.4g}" for k in (TOTAL_LOSS, "lm_loss", "ctc_loss", GRAD_NORM, LEARNING_RATE, THROUGHPUT)
                     if k in record]
            print(f"[{self.name}] step {record['step']}/{self.total} " + " ".join([*parts, self.timing(record["step"])]),
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

