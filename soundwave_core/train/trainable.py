"""Which parameters a stage trains: module names or globs from the recipe, nothing else."""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swv.backbones.base import is_peft_adapter_weight
from swv.core.errors import UsageError
from swv.train.stages import CTC, LM

if TYPE_CHECKING:
    from swv.model.speechlm import SpeechLM

LORA = "lora"


def _matches(name: str, pattern: str) -> bool:
    if pattern == LORA:
        return is_peft_adapter_weight(name)
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def protected_parameters(model: SpeechLM) -> set[str]:
    """Parameters the components keep frozen whatever the stage says."""
    out: set[str] = set()
    for name, adapter in model.adapters.items():
        out |= {f"adapters.{name}.{p}" for p in adapter.always_frozen()}
    return out


def apply_trainable(model: SpeechLM, patterns: list[str], where: str) -> OrderedDict[str, tuple[int, int]]:
    """Freeze everything, then unfreeze parameters matching ``patterns`` (``lora`` = every weight
    of the backbone's PEFT adapter: LoRA and trained added-token rows; ``adapters.alignment`` =
    that module; globs like ``adapters.*``).

    Returns trainable/total parameter counts per top-level module (``encoder``,
    ``adapters.<name>``, ``backbone``, ``backbone.lora``). A pattern that matches nothing, or
    one that would train a frozen encoder, is an error naming ``where``.
    """
    protected = protected_parameters(model)
    encoder_frozen = model.encoder.frozen
    hits = dict.fromkeys(patterns, 0)
    for name, param in model.named_parameters():
        wanted = [p for p in patterns if _matches(name, p)]
        if wanted and name.startswith("encoder.") and encoder_frozen:
            raise UsageError(f"{where}: {wanted[0]!r} would train the encoder, but model.encoder.frozen is true")
        train = bool(wanted) and name not in protected
        param.requires_grad_(train)
        for p in wanted:
            hits[p] += int(train)
    missing = [p for p, n in hits.items() if n == 0]
    if missing:
        groups = sorted({_group(n) for n, _ in model.named_parameters()})
        raise UsageError(f"{where}: {missing[0]!r} matches no trainable parameter; modules: {', '.join(groups)}, or 'lora'")
    counts: OrderedDict[str, tuple[int, int]] = OrderedDict()
    for name, param in model.named_parameters():
        group = _group(name)
        t, total = counts.get(group, (0, 0))
        counts[group] = (t + (param.numel() if param.requires_grad else 0), total + param.numel())
    return counts


def param_groups(model: SpeechLM, lr: float, lr_scale: dict[str, float], where: str) -> list[dict]:
    """The trainable parameters as optimizer groups: each parameter takes ``lr`` times the scale of
    the first ``lr_scale`` pattern it matches (patterns as in :func:`apply_trainable`), else
    ``lr``. A pattern that matches no trainable parameter is an error naming ``where``."""
    patterns = list(lr_scale)
    groups: dict[float, list] = {}
    first = dict.fromkeys(patterns, 0)  # parameters each entry decides (the first that matches)
    matched: set[str] = set()  # entries that match any trained parameter
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        hits = [p for p in patterns if _matches(name, p)]
        matched.update(hits)
        if hits:
            first[hits[0]] += 1
        groups.setdefault(lr * lr_scale[hits[0]] if hits else lr, []).append(param)
    for pattern, count in first.items():
        if pattern not in matched:
            raise UsageError(f"{where}: {pattern!r} matches no parameter this stage trains; "
                             f"trainable modules: {', '.join(sorted(trainable_groups(model)))}")
        if count == 0:
            raise UsageError(f"{where}: every parameter {pattern!r} matches is taken by an earlier entry")
    return [{"params": params, "lr": group_lr} for group_lr, params in groups.items()]


def _group(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "adapters" and len(parts) > 1:
        return f"adapters.{parts[1]}"
    if parts[0] == "backbone" and is_peft_adapter_weight(name):
        return "backbone.lora"
    return parts[0]


def format_counts(counts: OrderedDict[str, tuple[int, int]]) -> str:
    lines = [f"  {'module':<24}{'trainable':>14}{'total':>16}"]
    for group, (t, total) in counts.items():
        lines.append(f"  {group:<24}{t:>14,}{total:>16,}")
    t_all = sum(t for t, _ in counts.values())
    total_all = sum(n for _, n in counts.values())
    lines.append(f"  {'all':<24}{t_all:>14,}{total_all:>16,}")
    return "\n".join(lines)


def trainable_groups(model: SpeechLM) -> set[str]:
    """The module groups (as :func:`apply_trainable` counts them) holding a trainable parameter."""
    return {_group(name) for name, param in model.named_parameters() if param.requires_grad}


@dataclass(frozen=True)
class ChainLink:
    """What :func:`unreached_modules` needs of one adapter of the chain (its class's declarations)."""

    name: str
    produces_ctc: bool = False
    aux_losses: frozenset[str] = frozenset()


def unreached_modules(trainable: Iterable[str], chain: Sequence[ChainLink], weighted: Iterable[str],
                      run_backbone: bool, *, text_only_rows: bool = False) -> list[str]:
    """The trainable module groups (``encoder``, ``adapters.<name>``, ``backbone``,
    ``backbone.lora``) that may hold a parameter no weighted loss of the stage reaches: DDP
    needs ``find_unused_parameters`` exactly when this is not empty.

    ``weighted``: the stage's losses with a weight > 0 (``lm``, ``ctc``, auxiliary names);
    ``run_backbone``: whether the backbone runs. The LM loss reaches the backbone, every adapter
    and the encoder; the CTC loss the adapters up to the first that produces CTC logits (the
    chain stops there without the backbone); an auxiliary loss the adapters up to the one that
    declares it. An adapter counts as reached whole only when every loss it owns is weighted: a
    CTC head or an auxiliary branch without a weighted loss may get no gradient. With
    ``text_only_rows`` (the stage's data has rows without audio, or may have: a stream), a batch
    may hold no audio at all, and then neither the encoder nor any adapter runs.
    """
    weights = set(weighted)
    lm = run_backbone and LM in weights
    depth = len(chain) - 1 if lm else -1
    if CTC in weights:
        depth = max(depth, next((i for i, link in enumerate(chain) if link.produces_ctc), -1))
    depth = max([depth, *(i for i, link in enumerate(chain) if link.aux_losses & weights)])
    reached = {"backbone", "backbone.lora"} if lm else set()
    if depth >= 0 or lm:
        reached.add("encoder")
    for link in chain[: depth + 1]:
        if (not link.produces_ctc or CTC in weights) and link.aux_losses <= weights:
            reached.add(f"adapters.{link.name}")
    if text_only_rows:
        reached = {group for group in reached if group.startswith("backbone")}
    return sorted(set(trainable) - reached)
