"""``swv recipe plan``: what each stage of a recipe trains and sees, without loading weights.

The model is built on the meta device from the components' configs alone (a checkpoint
directory needs its ``config.json`` and, for the backbone, its tokenizer files; a Hub id must be
in the local Hugging Face cache: the plan never downloads), and every stage's trainable set is
applied to it with the training code's own :func:`swv.train.trainable.apply_trainable`. The data
are counted from the manifests (non-blank lines, ``duration`` fields, text fields), never loaded.

Per stage: parameters by module, rows per optimizer step, optimizer steps, epochs of the
mixture and of each source (expected values: the sampler draws each row's source at random with
the mixture's probabilities, one epoch being as many rows as the stage's sources hold), the
temperature and probabilities at the first and the last epoch, text tokens and audio hours seen,
and the memory of weights, gradients and AdamW states.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from swv.core.errors import SwvError, UsageError, first_line
from swv.core.hub import is_hub_id
from swv.data.sampler import full_batches, mixture_probabilities, scheduled_temperature
from swv.recipes.loader import LoadedRecipe, load_recipe
from swv.registry.components import Registry
from swv.train.runner import stage_seed, stage_total_steps
from swv.train.train_recipe import batch_plan
from swv.train.trainable import apply_trainable, format_counts

if TYPE_CHECKING:
    from swv.data.sampler import MixtureSampler
    from swv.model.speechlm import SpeechLM
    from swv.recipes.schema import DatasetSpec, StageSettings

#: Text fields of a record whose tokens a plan counts (prompt templates, default instructions and
#: audio positions are not counted).
TOKEN_FIELDS = ("instruction", "text", "response")
#: Files of a Hub snapshot a plan reads from the local cache (configs and tokenizers, no weights).
CONFIG_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken"]
#: Rows a plan lets a stage's own sampler draw to count exactly what each source gives (above:
#: expected values from the mixture's probabilities).
MAX_SIMULATED_ROWS = 5_000_000
#: What a plan says of each source of a stage (``None``: unknown).
SEEN_KEYS = ("probability_start", "probability_end", "rows_seen", "epochs", "hours_seen", "tokens_seen")
#: How the numbers seen were found, for the table.
SEEN_BY = {"sampler": "as the stage's own sampler draws the rows (its seed)",
           "expected": "expected from the mixture's probabilities"}
#: How the memory estimate is computed (printed with it).
MEMORY_FORMULA = ("weights = sum(numel x bytes of dtype) over all parameters; gradients = the same over trainable "
                  "ones; AdamW = 2 x gradients (exp_avg, exp_avg_sq in the parameter's dtype); per GPU under DDP "
                  "(every process holds all three); activations, buffers and the CUDA context not included")


@dataclass
class SourceCount:
    """One data source as counted by the plan (``None``: unknown, ``note`` says why)."""

    name: str
    rows: int | None = None
    hours: float | None = None  # audio hours of one pass; None when a row's duration is not written
    tokens: int | None = None  # text tokens of one pass (:data:`TOKEN_FIELDS`)
    note: str = ""  # what the source is
    caveats: list[str] = field(default_factory=list)  # what the plan could not count exactly
    tags: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)  # per row, until tokenized
    #: per row: seconds (-1 for text-only rows, as the loader has them); None when an audio row has none
    durations: list[float] | None = None
    row_tokens: list[int] | None = None  # per row


def count_manifest(name: str, spec: DatasetSpec) -> SourceCount:
    """Rows, audio hours, tags and texts of a manifest source (no audio file is opened)."""
    from swv.data.manifest import read_manifest
    from swv.data.rows import record_tags, resolve_data_path

    assert spec.manifest is not None
    path = resolve_data_path(spec.manifest)
    if not path.is_file():
        return SourceCount(name, note=f"manifest {path}", caveats=["not found: size unknown"])
    out = SourceCount(name, note=f"manifest {path}")
    durations: list[float] = []
    timed = True  # every audio row has its duration written
    for line_no, record in read_manifest(path, required=()):
        if spec.max_samples is not None and len(durations) == spec.max_samples:
            break
        out.tags.update(record_tags(record.get("tags"), f"{path}:{line_no}").split())
        out.texts.append(" ".join(record[k] for k in TOKEN_FIELDS if isinstance(record.get(k), str)))
        duration = record.get("duration")
        audio = record.get("audio") not in (None, "")
        timed = timed and (not audio or (isinstance(duration, (int, float)) and not isinstance(duration, bool)))
        durations.append(float(duration) if audio and timed else -1.0)
    if not durations:
        out.caveats.append("no records: size unknown")
        return out
    out.rows = len(durations)
    out.durations = durations if timed else None
    out.hours = sum(d for d in durations if d > 0) / 3600 if timed else None
    if not timed:
        out.caveats.append("audio hours unknown: some audio rows have no duration field")
    if spec.on_error == "skip":
        out.caveats.append("on_error: skip: the rows are at most this (bad rows are not counted out)")
    return out


def count_source(name: str, spec: DatasetSpec) -> SourceCount:
    if spec.manifest is not None:
        return count_manifest(name, spec)
    if spec.streaming and spec.num_rows is not None:
        return SourceCount(name, rows=spec.num_rows, note=f"streaming {spec.hf_dataset} (num_rows)")
    kind = f"hf_dataset {spec.hf_dataset}" if spec.hf_dataset is not None else f"shards {spec.shards}"
    return SourceCount(name, note=kind, caveats=["size unknown without reading it (tags not scanned)"])


def cached_snapshot(source: str, revision: str | None) -> str | None:
    """The local Hugging Face cache's snapshot of Hub id ``source`` (config and tokenizer files;
    nothing is downloaded), or ``None`` when it is not cached."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=source, revision=revision, allow_patterns=CONFIG_PATTERNS, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), unknown revision...
        return None


def local_overrides(loaded: LoadedRecipe) -> list[str]:
    """Overrides pointing every Hub id of the model (encoder/backbone ``path``, backbone
    ``tokenizer``) at its snapshot in the local cache; a :class:`UsageError` naming every one
    that is not cached."""
    out: list[str] = []
    missing: list[str] = []
    components = loaded.model_components
    for key, component in (("encoder", components.encoder), ("backbone", components.backbone)):
        args = component.to_dict()
        for attr in ("path", "tokenizer"):
            value = args.get(attr)
            if not (isinstance(value, str) and is_hub_id(value)):
                continue
            revision = args.get("revision") if attr == "path" else None
            snapshot = cached_snapshot(value, revision)
            if snapshot is None:
                missing.append(f"model.{key}.{attr} ({value})")
                continue
            out.append(f"model.{key}.{attr}={snapshot}")
            if revision is not None:
                out.append(f"model.{key}.revision=null")
    if missing:
        raise UsageError(
            f"{'; '.join(missing)}: Hugging Face Hub id(s) not in the local cache; the plan reads configs only and "
            "never downloads: fetch their config and tokenizer files first (hf download ID --include '*.json' "
            "'*.model' '*.txt') or point those fields at local directories holding them (no weights needed)"
        )
    return out


def meta_model(loaded: LoadedRecipe, tags: list[str]) -> SpeechLM:
    """The recipe's fresh model on the meta device, from its components' configs only."""
    from swv.nn.meta import meta_build
    from swv.train.runner import build_model

    try:
        with meta_build(None, str(loaded.source), 0, config_only=True):
            return build_model(loaded, None, tags)
    except SwvError:
        raise
    except Exception as exc:  # a component that loads weights in its constructor cannot be built on meta
        raise UsageError(f"{loaded.source}: the model cannot be built on the meta device ({first_line(exc)})") from None


def count_tokens(model: SpeechLM, sources: dict[str, SourceCount], chunk: int = 4096) -> None:
    """Each counted source's text tokens, per row, with the model's tokenizer (no special tokens)."""
    for source in sources.values():
        if source.rows is None or not source.texts:
            continue
        lengths: list[int] = []
        for start in range(0, len(source.texts), chunk):
            ids = model.tokenizer(source.texts[start : start + chunk], add_special_tokens=False)["input_ids"]
            lengths += [len(row) for row in ids]
        source.row_tokens, source.tokens, source.texts = lengths, sum(lengths), []


def memory_bytes(model: SpeechLM) -> dict[str, int]:
    """Bytes of the weights, the gradients and the AdamW states (see :data:`MEMORY_FORMULA`)."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return {"weights": weights, "gradients": grads, "adamw": 2 * grads, "total": weights + 3 * grads}


def stage_sampler(loaded: LoadedRecipe, index: int, sources: list[SourceCount], frame_rate: float) -> MixtureSampler | None:
    """The stage's own mixture sampler (its seed, batch, mixture and frame budget, one process)
    over the manifests' durations; ``None`` when a source's rows or an audio row's duration is
    unknown, or the stage has more than :data:`MAX_SIMULATED_ROWS` rows."""
    import datasets

    from swv.data.stage_data import StageDataset, make_sampler

    if any(s.durations is None for s in sources) or sum(s.rows or 0 for s in sources) > MAX_SIMULATED_ROWS:
        return None
    settings = loaded.recipe.stages[index]
    durations = [d for s in sources for d in s.durations or []]
    data = StageDataset(datasets.Dataset.from_dict({"duration": durations}), [s.name for s in sources],
                        [s.rows or 0 for s in sources])
    return make_sampler(data, settings.data, settings.batch_size, seed=stage_seed(loaded.recipe, index), rank=0,
                        world_size=1, max_frames_per_batch=loaded.recipe.data.max_frames_per_batch, frame_rate=frame_rate)


def drawn_rows(sampler: MixtureSampler, micro_batches: int) -> tuple[list[np.ndarray], float] | None:
    """Per source, the rows (indices within it) of the first ``micro_batches`` global batches the
    sampler gives, and the epochs they span; ``None`` when that means drawing more than
    :data:`MAX_SIMULATED_ROWS` rows."""
    if math.ceil(micro_batches / sampler.batches_per_epoch()) * sampler.total > MAX_SIMULATED_ROWS:
        return None
    taken: list[int] = []
    epoch, left, epochs = 0, micro_batches, 0.0
    while left > 0:
        batches = sampler.epoch_batches(epoch)
        taken += [i for batch in batches[:left] for i in batch]
        epochs += min(left, len(batches)) / len(batches)
        left, epoch = left - len(batches), epoch + 1
    offsets = np.cumsum([0, *sampler.sizes])
    rows = np.asarray(taken, dtype=np.int64)
    which = np.searchsorted(offsets, rows, side="right") - 1
    return [rows[which == k] - offsets[k] for k in range(len(sampler.sizes))], epochs


def seen_by_sampler(sources: list[SourceCount], drawn: list[np.ndarray]) -> list[dict[str, Any]]:
    """Rows, epochs, text tokens and audio hours each source gave, from the rows the sampler drew."""
    out = []
    for source, rows in zip(sources, drawn):
        assert source.rows and source.durations is not None
        seconds = np.clip(np.asarray(source.durations)[rows], 0, None).sum()
        tokens = None if source.row_tokens is None else int(np.asarray(source.row_tokens, dtype=np.int64)[rows].sum())
        out.append({"rows_seen": len(rows), "epochs": len(rows) / source.rows, "hours_seen": float(seconds) / 3600,
                    "tokens_seen": tokens})
    return out


def expected_seen(settings: StageSettings, sources: list[SourceCount], epochs: float) -> list[dict[str, Any]]:
    """Rows, epochs, text tokens and audio hours each source gives on average over ``epochs``
    epochs of the mixture (an epoch draws each of its rows from source k with probability p_k)."""
    sizes = [s.rows or 0 for s in sources]
    seen = np.zeros(len(sources))
    for epoch in range(math.ceil(epochs)):
        fraction = min(1.0, epochs - epoch)
        seen += fraction * sum(sizes) * mixture_probabilities(sizes, temperature_at(settings, epoch))
    return [{"rows_seen": float(n), "epochs": float(n) / source.rows if source.rows else None,
             "hours_seen": None if source.hours is None or not source.rows else source.hours * float(n) / source.rows,
             "tokens_seen": None if source.tokens is None or not source.rows else source.tokens * float(n) / source.rows}
            for source, n in zip(sources, seen)]


def temperature_at(settings: StageSettings, epoch: int) -> float:
    mix = settings.data.mixture
    return scheduled_temperature(mix.temperature, mix.temperature_step, epoch)


def epoch_plan(loaded: LoadedRecipe, index: int, sources: list[SourceCount],
               frame_rate: float) -> tuple[MixtureSampler | None, dict[str, Any]]:
    """The stage's sampler (see :func:`stage_sampler`), rows and global batches per epoch, and
    optimizer steps (``None`` where a source's size is unknown)."""
    settings = loaded.recipe.stages[index]
    if any(s.rows is None for s in sources):
        return None, {"rows_per_epoch": None, "batches_per_epoch": None, "steps": settings.max_steps}
    sampler = stage_sampler(loaded, index, sources, frame_rate)
    total = sum(s.rows or 0 for s in sources)
    per_epoch = sampler.batches_per_epoch() if sampler is not None else full_batches(total, settings.batch_size)
    return sampler, {"rows_per_epoch": total, "batches_per_epoch": per_epoch, "steps": stage_total_steps(settings, per_epoch)}


def mixture_plan(loaded: LoadedRecipe, index: int, sources: list[SourceCount], frame_rate: float) -> dict[str, Any]:
    """Steps, epochs, the temperature and probabilities at the first and the last epoch, and what
    each source gives: the rows the stage's own sampler draws when every row's duration is
    known (``seen_by: sampler``), else expected values (``seen_by: expected``)."""
    settings = loaded.recipe.stages[index]
    sampler, out = epoch_plan(loaded, index, sources, frame_rate)
    out.update(temperature_start=temperature_at(settings, 0), temperature_end=None, epochs=None, seen_by=None)
    seen: list[dict[str, Any]] = [dict.fromkeys(SEEN_KEYS) for _ in sources]
    if out["batches_per_epoch"] is not None:
        micro = out["steps"] * settings.grad_accum
        drawn = None if sampler is None else drawn_rows(sampler, micro)
        out["epochs"] = drawn[1] if drawn is not None else micro / out["batches_per_epoch"]
        out["seen_by"] = "expected" if drawn is None else "sampler"
        seen = expected_seen(settings, sources, out["epochs"]) if drawn is None else seen_by_sampler(sources, drawn[0])
        out["temperature_end"] = temperature_at(settings, math.ceil(out["epochs"]) - 1)
        sizes = [s.rows or 0 for s in sources]
        first = mixture_probabilities(sizes, out["temperature_start"]).tolist()
        last = mixture_probabilities(sizes, out["temperature_end"]).tolist()
        seen = [{**r, "probability_start": p0, "probability_end": p1} for r, p0, p1 in zip(seen, first, last)]
    out["sources"] = [{**_source_fields(s), **r} for s, r in zip(sources, seen)]
    for key in ("rows_seen", "tokens_seen", "hours_seen"):
        values = [r[key] for r in seen]
        out[key] = None if any(v is None for v in values) else sum(values)
    return out


def _source_fields(source: SourceCount) -> dict[str, Any]:
    return {"name": source.name, "rows": source.rows, "hours": source.hours, "tokens": source.tokens, "note": source.note}


def stage_plan(model: SpeechLM, loaded: LoadedRecipe, index: int, sources: dict[str, SourceCount]) -> dict[str, Any]:
    """One stage's plan (see the module docstring)."""
    settings = loaded.recipe.stages[index]
    counts = apply_trainable(model, list(settings.trainable), f"stages[{index}] ({settings.name})")
    batch = batch_plan(loaded.recipe, 1)[settings.name]
    stage_sources = [sources[name] for name in settings.data.datasets]
    return {
        "name": settings.name, "kind": settings.kind, "trainable_patterns": list(settings.trainable),
        "parameters": {group: {"trainable": t, "total": n} for group, (t, n) in counts.items()},
        "trainable": sum(t for t, _ in counts.values()), "total": sum(n for _, n in counts.values()),
        "global_batch": batch["global_batch"], "grad_accum": batch["grad_accum"], "rows_per_step": batch["rows_per_step"],
        "frame_budget": loaded.recipe.data.max_frames_per_batch,
        **mixture_plan(loaded, index, stage_sources, model.encoder.frame_rate),
        "memory_bytes": memory_bytes(model),
    }


def plan_recipe(recipe: str, overrides: list[str], registry: Registry) -> dict[str, Any]:
    """The plan of every stage of ``recipe`` (a shipped name or a YAML path) with ``overrides``."""
    loaded = load_recipe(recipe, overrides, registry)
    local = local_overrides(loaded)
    if local:
        loaded = load_recipe(recipe, [*overrides, *local], registry)
    sources = {name: count_source(name, spec) for name, spec in loaded.recipe.data.datasets.items()}
    tags = sorted({tag for source in sources.values() for tag in source.tags})
    model = meta_model(loaded, tags)
    count_tokens(model, sources)
    notes = [f"data source {s.name!r} ({s.note}): {caveat}" for s in sources.values() for caveat in s.caveats]
    notes += [f"stage {s.name!r} starts from init_from={s.init_from}; counted on the recipe's architecture"
              for s in loaded.recipe.stages if s.init_from is not None]
    return {
        "recipe": str(loaded.source), "precision": loaded.recipe.precision, "memory_formula": MEMORY_FORMULA,
        "stages": [stage_plan(model, loaded, i, sources) for i in range(len(loaded.recipe.stages))],
        "sources": {name: _source_fields(s) for name, s in sources.items()}, "notes": notes,
    }


# -- the readable table ---------------------------------------------------------------------------
def _num(value: float | None, digits: int = 0) -> str:
    """A number for the table (``unknown`` for ``None``)."""
    if value is None:
        return "unknown"
    return f"{value:,.{digits}f}"


def _bytes(value: int) -> str:
    return f"{value / 2**30:,.2f} GiB" if value >= 2**30 else f"{value / 2**20:,.1f} MiB"


def format_sources(stage: dict[str, Any]) -> list[str]:
    """The stage's per-source lines: rows, probabilities at the start and the end, epochs, seen."""
    lines = [f"  {'source':<22}{'rows':>10}{'hours':>9}{'tokens':>12}{'p start':>9}{'p end':>8}{'epochs':>9}"
             f"{'hours seen':>12}{'tokens seen':>14}"]
    for s in stage["sources"]:
        p0 = "unknown" if s["probability_start"] is None else f"{s['probability_start']:.4f}"
        p1 = "unknown" if s["probability_end"] is None else f"{s['probability_end']:.4f}"
        lines.append(f"  {s['name']:<22}{_num(s['rows']):>10}{_num(s['hours'], 2):>9}{_num(s['tokens']):>12}{p0:>9}"
                     f"{p1:>8}{_num(s['epochs'], 2):>9}{_num(s['hours_seen'], 2):>12}{_num(s['tokens_seen']):>14}")
    return lines


def format_stage(stage: dict[str, Any], precision: str) -> list[str]:
    counts = OrderedDict((g, (c["trainable"], c["total"])) for g, c in stage["parameters"].items())
    steps = "unknown (epochs of a source of unknown size)" if stage["steps"] is None else f"{stage['steps']:,}"
    lines = [f"== stage {stage['name']} ({stage['kind']}): trains {', '.join(stage['trainable_patterns'])} ==",
             format_counts(counts),
             f"  rows per optimizer step: {stage['rows_per_step']:,} = global batch {stage['global_batch']:,} x "
             f"{stage['grad_accum']} accumulation",
             f"  optimizer steps: {steps}"]
    if stage["epochs"] is not None:
        budget = ""
        if stage["frame_budget"] and stage["seen_by"] == "expected":
            budget = " (a frame budget may split batches: epochs at most)"
        lines.append(f"  epochs of the mixture: {stage['epochs']:.2f} ({stage['batches_per_epoch']:,} global batches of "
                     f"{stage['rows_per_epoch']:,} rows per epoch){budget}")
    end = "unknown" if stage["temperature_end"] is None else f"{stage['temperature_end']:g}"
    lines.append(f"  temperature: {stage['temperature_start']:g} at the start, {end} at the end")
    lines += format_sources(stage)
    how = SEEN_BY.get(stage["seen_by"], "unknown")
    lines.append(f"  seen, {how}: {_num(stage['rows_seen'])} rows, {_num(stage['hours_seen'], 2)} audio hours, "
                 f"{_num(stage['tokens_seen'])} text tokens")
    mem = stage["memory_bytes"]
    lines.append(f"  memory per GPU (precision {precision}): weights {_bytes(mem['weights'])} + gradients "
                 f"{_bytes(mem['gradients'])} + AdamW {_bytes(mem['adamw'])} = {_bytes(mem['total'])}")
    return lines


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as readable text (``--json`` prints the dict itself)."""
    lines = [f"# plan of {plan['recipe']} (built on the meta device from configs; no weights loaded)"]
    for stage in plan["stages"]:
        lines += format_stage(stage, plan["precision"])
    lines.append(f"memory: {plan['memory_formula']}")
    lines.append(f"tokens: the records' {', '.join(TOKEN_FIELDS)} fields (prompt template, default instructions and "
                 "audio positions not counted)")
    lines += [f"note: {note}" for note in plan["notes"]]
    return "\n".join(lines)
