"""Options shared by several commands, defined once: ``Annotated`` aliases, option groups, types.

An option group is a frozen dataclass whose fields are options (an ``Annotated[..., typer.Option]``
and a default). A command decorated with :func:`with_option_groups` takes a group as one
parameter; its ``--help`` lists the group's options in that parameter's place.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar, get_type_hints

import typer

from swv.core.devices import AUTO_DEVICE, DEVICE_HELP
from swv.core.errors import UsageError
from swv.data.missing_audio import DEFAULT_ON_MISSING, ON_MISSING_CHOICES, audio_exists, check_manifest_audio
from swv.model.defaults import GenerationDefaults

if TYPE_CHECKING:
    from swv.infer.pipeline import GenerationSettings


#: ``--help`` of a ``--dtype`` that names the dtype of written weights
WEIGHT_DTYPES = "float32, float16 or bfloat16, or fp32/fp16/bf16/half"


def weight_dtype(name: str | None) -> str | None:
    """A ``--dtype`` of written weights: a dtype name or alias -> its canonical name (None stays None)."""
    from swv.core.dtypes import canonical_dtype

    if name is None:
        return None
    try:
        return canonical_dtype(name)
    except ValueError as exc:
        raise UsageError(f"--dtype: {exc}") from None


#: ``--on-missing`` values (swv.data.missing_audio.ON_MISSING_CHOICES)
OnMissing = Enum("OnMissing", {name: name for name in ON_MISSING_CHOICES}, type=str)  # type: ignore[misc]
OnMissingOption = Annotated[OnMissing, typer.Option(
    "--on-missing", help="Audio files named but not found: fail (stop, naming how many and the first) or skip "
    "(leave them out and count them in the summary / as failed items of the report).")]
#: the default of every ``--on-missing``
ON_MISSING_DEFAULT = OnMissing(DEFAULT_ON_MISSING)
#: what ``infer`` and ``eval`` do with a clip ``--on-missing skip`` left out
COUNTED_AS_FAILED = "they count as failed items"


def check_missing_audio(command: str, on_missing: OnMissing | str, *manifests: Path,
                        exists: Callable[[Path], bool] = audio_exists, then: str = "") -> None:
    """``--on-missing`` of ``command`` (``"infer"``, ``"data shard"``...), which reads the audio of
    ``manifests``: under ``fail`` a clip that does not exist stops it before any work (one error
    line); under ``skip`` one line on stderr per manifest counts the missing clips, the same
    wording in every command (``then``: what the command does with them, e.g.
    :data:`COUNTED_AS_FAILED`). ``exists``: by default a regular file."""
    policy = OnMissing(on_missing).value
    for manifest in manifests:
        skipped = check_manifest_audio(manifest, policy, exists=exists).summary("record(s)")
        if skipped:
            typer.echo(f"{command}: {skipped}" + (f"; {then}" if then else ""), err=True)


# -- the model ---------------------------------------------------------------------------------
ModelSource = Annotated[str, typer.Argument(
    metavar="MODEL", help="Model directory written by training / SpeechLM.save_pretrained, or a Hugging Face Hub id.")]
Revision = Annotated[Optional[str], typer.Option(
    "--revision", help="Branch, tag or commit of a Hub id MODEL (offline with HF_HUB_OFFLINE=1: from the cache).")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Let a model component that asks for it run the Python code its directory ships "
    "(a model directory can never enable this itself). Review that code first.")]
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
Dtype = Annotated[Optional[str], typer.Option(
    "--dtype", help="Cast the model to float32, float16 or bfloat16, or fp32/fp16/bf16/half (default: as saved).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Inputs generated together.")]
MaxDuration = Annotated[float, typer.Option(
    "--max-duration", min=0.0,
    help="Longest clip accepted, in seconds; longer ones are an error. Memory grows linearly with the "
    "duration: raise it for longer audio.")]

# -- generation --------------------------------------------------------------------------------
MaxNewTokens = Annotated[Optional[int], typer.Option(
    "--max-new-tokens", min=1, help="Most tokens generated per answer (default: the model's, 256 unless it says otherwise).")]
Temperature = Annotated[Optional[float], typer.Option(
    "--temperature", help="Sampling temperature (> 0; with --do-sample; default: the model's).")]
TopP = Annotated[Optional[float], typer.Option(
    "--top-p", help="Nucleus sampling mass in (0, 1] (with --do-sample; default: the model's).")]
DoSample = Annotated[Optional[bool], typer.Option(
    "--do-sample/--greedy", help="Sample instead of greedy decoding (default: the model's; greedy unless it says otherwise).")]
_DECODING = GenerationDefaults()
LengthBound = Annotated[Optional[bool], typer.Option(
    "--length-bound/--no-length-bound",
    help="Cap transcripts and translations (task asr/st, or the model's default instruction of one) at what the "
    f"audio can hold: {_DECODING.length_bound_per_audio_token:g} per audio token, kept within "
    f"{_DECODING.length_bound_min_tokens_per_second:g}-{_DECODING.length_bound_tokens_per_second:g} tokens per second of "
    f"audio, + {_DECODING.length_bound_margin} new tokens "
    "unless the model says otherwise, never above the answer's token limit (default: the model's; on for swv-trained "
    "models, off for imported released ones).")]
NoRepeatNgramSize = Annotated[Optional[int], typer.Option(
    "--no-repeat-ngram-size", min=0,
    help="Never repeat a run of this many tokens within an answer; 0: off (default: the model's; "
    f"{_DECODING.no_repeat_ngram_size} for swv-trained models, 0 for imported released ones).")]
RepetitionPenalty = Annotated[Optional[float], typer.Option(
    "--repetition-penalty",
    help="Divide the scores of tokens already in the answer by this (> 0; 1.0: off, the default unless the "
    "model says otherwise; above 1 discourages repeats, also of words a normal answer repeats).")]
CtcWeight = Annotated[Optional[float], typer.Option(
    "--ctc-weight", min=0.0, max=1.0,
    help="Rescore transcripts (task asr, or the model's default transcription instruction) with the CTC head: of "
    "the answer and the CTC head's greedy reading, keep the one with the higher (1 - w) * log P_LLM + w * log P_CTC; "
    f"0: off (default: the model's; {_DECODING.ctc_weight:g} unless it says otherwise).")]
System = Annotated[Optional[str], typer.Option(
    "--system", help="System prompt (default: the one saved with the model, i.e. the paper's; '' for none).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed torch's RNG once before generating.")]


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """How answers are generated (``swv infer``, ``swv eval``): the decoding settings, each left
    ``None`` taking the model's saved default, and the system prompt."""

    max_new_tokens: MaxNewTokens = None
    temperature: Temperature = None
    top_p: TopP = None
    do_sample: DoSample = None
    length_bound: LengthBound = None
    no_repeat_ngram_size: NoRepeatNgramSize = None
    repetition_penalty: RepetitionPenalty = None
    ctc_weight: CtcWeight = None
    system: System = None
    seed: Seed = None

    def settings(self) -> GenerationSettings:
        """The decoding settings (everything but the system prompt)."""
        from swv.infer.pipeline import GenerationSettings

        return GenerationSettings(
            max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed, length_bound=self.length_bound,
            no_repeat_ngram_size=self.no_repeat_ngram_size, repetition_penalty=self.repetition_penalty,
            ctc_weight=self.ctc_weight,
        )


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Where the model runs and how many inputs it takes at once (``swv infer``, ``swv eval``)."""

    device: Device = AUTO_DEVICE
    dtype: Dtype = None
    batch_size: BatchSize = 8


# -- option groups -----------------------------------------------------------------------------
CommandT = TypeVar("CommandT", bound=Callable[..., Any])


def with_option_groups(command: CommandT) -> CommandT:
    """``command`` with each parameter annotated by an option group (a keyword-only parameter)
    replaced, in the signature Typer reads, by the group's options; called with those options, it
    receives the group built from them."""
    hints = get_type_hints(command, include_extras=True)
    groups = {name: hint for name, hint in hints.items() if isinstance(hint, type) and dataclasses.is_dataclass(hint)}
    signature = inspect.signature(command)
    params: list[inspect.Parameter] = []
    for name, param in signature.parameters.items():
        if name not in groups:
            params.append(param.replace(annotation=hints.get(name, param.annotation)))
            continue
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{command.__qualname__}: option group {name!r} must be a keyword-only parameter")
        group_hints = get_type_hints(groups[name], include_extras=True)
        params += [inspect.Parameter(field.name, param.kind, default=field.default, annotation=group_hints[field.name])
                   for field in dataclasses.fields(groups[name])]

    @functools.wraps(command)
    def grouped(*args: Any, **options: Any) -> Any:
        for name, group in groups.items():
            names = [field.name for field in dataclasses.fields(group) if field.name in options]
            options[name] = group(**{field: options.pop(field) for field in names})
        return command(*args, **options)

    grouped.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    grouped.__annotations__ = {param.name: param.annotation for param in params}
    return grouped  # type: ignore[return-value]
