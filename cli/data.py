"""`swv data ...`: build, filter, augment and inspect JSONL manifests.

Each command is a thin wrapper over a library function in :mod:`swv.dataprep`; heavy
modules are imported inside the commands so ``swv --help`` stays fast. Progress bars
go to stderr, the summary to stdout; user errors are :class:`swv.core.errors.SwvError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from swv.cli.commands import SwvTyper
from swv.cli.options import ON_MISSING_DEFAULT, OnMissing, OnMissingOption, check_missing_audio
from swv.core.audio import DEFAULT_MAX_AUDIO_BYTES
from swv.core.devices import AUTO_DEVICE, DEVICE_HELP
from swv.core.errors import UsageError
from swv.core.plotting import PLOT_HINT
from swv.data.missing_audio import path_exists
from swv.dataprep.sft import FORMATS, TEMPLATES

app = SwvTyper(
    help="Data engineering: build manifests, apply the paper's quality filters, splice multi-speaker "
    "audio, insert sound events, generate SFT instructions and print statistics.",
    no_args_is_help=True,
)


def _split_list(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UsageError(f"{option} must be a comma-separated list, got {value!r}")
    return items


@app.command("manifest")
def manifest_cmd(
    audio_dir: Annotated[Path, typer.Argument(
        help="Folder searched recursively for audio files; with --format, the corpus folder or table.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write (JSONL).")],
    task: Annotated[str, typer.Option(help="Value of the 'task' field (folders without --format).")] = "asr",
    transcripts: Annotated[Optional[Path], typer.Option(
        help="CSV/TSV table of path,text (paths relative to AUDIO_DIR) instead of sidecar .txt/.lab files.")] = None,
    language: Annotated[Optional[str], typer.Option(help="Value of the 'language' field (omitted if not given).")] = None,
    corpus_format: Annotated[Optional[str], typer.Option(
        "--format", help="Read a corpus in its own layout: a registered corpus layout, e.g. librispeech or csv "
        "(`swv plugins list` shows them all with their layouts).")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="--format: the split, as the layout names it (e.g. librispeech: a sub-folder such as test-clean; "
        "commonvoice: a table such as dev).")] = None,
    clips: Annotated[Optional[Path], typer.Option(
        help="--format: the layout's clips folder (covost2, commonvoice: the CommonVoice clips; mustc: where the "
        "segments are cut to; meld, mmau: another folder of their clips).")] = None,
    on_missing: OnMissingOption = ON_MISSING_DEFAULT,
) -> None:
    """Build a manifest from a folder of audio files with sidecar transcripts or a transcript table,
    or (--format) from a standard corpus in its own layout.

    Audio files the corpus or the --transcripts table names but that do not exist stop the command
    (--on-missing fail, the default) or are left out and counted in the summary (--on-missing skip)."""
    if corpus_format is None:
        if split is not None or clips is not None:
            raise UsageError("--split and --clips need --format")
        from swv.dataprep.manifest import build_manifest

        report = build_manifest(audio_dir, out, task=task, transcripts=transcripts, language=language,
                                on_missing=OnMissing(on_missing).value)
    else:
        if transcripts is not None:
            raise UsageError("--transcripts applies to plain folders, not to --format")
        from swv.dataprep.corpora import CorpusOptions, build_corpus_manifest

        opts = CorpusOptions(split=split, language=language, clips=clips)
        report = build_corpus_manifest(audio_dir, out, corpus_format, opts, on_missing=OnMissing(on_missing).value)
    typer.echo(report.format())


@app.command("filter")
def filter_cmd(
    manifest: Annotated[Path, typer.Argument(help="Input manifest.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest of the kept rows.")],
    rejected: Annotated[Optional[Path], typer.Option(
        help="Also write rejected rows here, with 'reject_reason' and 'reject_detail'.")] = None,
    duration_filter: Annotated[bool, typer.Option(
        "--duration-filter/--no-duration-filter", help="Keep min <= duration <= max.")] = True,
    min_duration: Annotated[float, typer.Option(help="Minimum duration (s).")] = 3.0,
    max_duration: Annotated[float, typer.Option(help="Maximum duration (s).")] = 30.0,
    text_filter: Annotated[bool, typer.Option(
        "--text-filter/--no-text-filter", help="Reject transcripts longer than --max-text-tokens.")] = True,
    max_text_tokens: Annotated[int, typer.Option(help="Maximum transcript length in tokens.")] = 200,
    tokenizer: Annotated[Optional[Path], typer.Option(
        help="Local Hugging Face tokenizer folder for counting tokens (default: whitespace words).")] = None,
    frames_filter: Annotated[bool, typer.Option(
        "--frames-filter/--no-frames-filter", help="Reject rows with too many frames per token.")] = True,
    max_frames_per_token: Annotated[float, typer.Option(help="Maximum frames / transcript tokens.")] = 100.0,
    frame_rate: Annotated[float, typer.Option(
        help="Frames per second of audio (100 = Whisper log-mel frames, 10 ms hop).")] = 100.0,
    wer_model: Annotated[Optional[Path], typer.Option(
        help="Local Whisper checkpoint folder; enables the WER filter.")] = None,
    max_wer: Annotated[float, typer.Option(help="Keep rows whose WER is strictly below this.")] = 0.10,
    wer_batch_size: Annotated[int, typer.Option(help="Clips per Whisper batch.")] = 8,
    device: Annotated[str, typer.Option(help=f"Device of the Whisper model. {DEVICE_HELP}")] = AUTO_DEVICE,
    verify_audio: Annotated[bool, typer.Option(
        "--verify-audio", help="Decode every file fully (slower) instead of reading headers only.")] = False,
    on_missing: OnMissingOption = ON_MISSING_DEFAULT,
) -> None:
    """Apply the paper's quality filters (duration, text length, frames per token, Whisper WER).

    A clip the manifest names that does not exist stops the command (--on-missing fail, the
    default) or is rejected and counted as unreadable audio (--on-missing skip)."""
    check_missing_audio("data filter", on_missing, manifest, exists=path_exists)
    from swv.dataprep.filters import (
        FilterConfig,
        WhisperTranscriber,
        filter_manifest,
        load_token_counter,
    )

    cfg = FilterConfig(
        min_duration=min_duration if duration_filter else None,
        max_duration=max_duration if duration_filter else None,
        max_text_tokens=max_text_tokens if text_filter else None,
        max_frames_per_token=max_frames_per_token if frames_filter else None,
        frame_rate=frame_rate,
        max_wer=max_wer,
        wer_batch_size=wer_batch_size,
        verify_audio=verify_audio,
    )
    cfg.validate()
    counter = load_token_counter(tokenizer) if tokenizer is not None else None
    unit = f"tokens of the tokenizer in {tokenizer}" if tokenizer is not None else "whitespace words"
    transcribe = WhisperTranscriber(wer_model, device=device) if wer_model is not None else None
    report = filter_manifest(
        manifest, out, rejected=rejected, config=cfg, count_tokens=counter, token_unit=unit,
        transcribe=transcribe, wer_model_name=f"Whisper {wer_model}",
    )
    typer.echo(report.format())


@app.command("splice")
def splice_cmd(
    manifest: Annotated[Path, typer.Argument(help="Input manifest with 'text' (and ideally 'speaker').")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest of the spliced samples.")],
    audio_dir: Annotated[Path, typer.Option(help="Folder for the spliced WAV files.")],
    speakers: Annotated[int, typer.Option(help="Speakers (utterances) per sample.")] = 2,
    template: Annotated[str, typer.Option(
        help="Prefix of each part; {ordinal} = first, second, ...; {n} = 1, 2, ...")] = "The {ordinal} speaker says",
    phrase: Annotated[Optional[list[str]], typer.Option(
        help="Prefix of one speaker position; repeat once per speaker (overrides --template).")] = None,
    gap: Annotated[float, typer.Option(help="Silence between parts (s).")] = 0.0,
    max_duration: Annotated[float, typer.Option(help="Maximum spliced length (s); 0 = no limit.")] = 30.0,
    num_samples: Annotated[Optional[int], typer.Option(help="Stop after this many samples.")] = None,
    sample_rate: Annotated[int, typer.Option(help="Sample rate of the written audio.")] = 16000,
    task: Annotated[str, typer.Option(help="Value of the 'task' field.")] = "asr",
    seed: Annotated[int, typer.Option(help="Random seed for pairing.")] = 0,
    on_missing: OnMissingOption = ON_MISSING_DEFAULT,
) -> None:
    """Splice utterances of different speakers into multi-speaker samples (a clip that does not
    exist: --on-missing fail stops, skip drops and reports it)."""
    check_missing_audio("data splice", on_missing, manifest, exists=path_exists)
    from swv.dataprep.multi_speaker import splice_manifest

    report = splice_manifest(
        manifest, out, audio_dir, speakers=speakers, template=template, phrases=phrase or None, gap=gap,
        max_duration=max_duration or None, num_samples=num_samples, sample_rate=sample_rate, task=task, seed=seed,
    )
    typer.echo(report.format())


@app.command("sound-insert")
def sound_insert_cmd(
    speech: Annotated[Path, typer.Option(help="Speech manifest with 'text'.")],
    sounds: Annotated[Path, typer.Option(help="Sound manifest with 'label' (e.g. throat_clearing).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest of the mixed samples.")],
    audio_dir: Annotated[Path, typer.Option(help="Folder for the mixed WAV files.")],
    mode: Annotated[str, typer.Option(
        help="concat: two utterances around the sound; split: cut one utterance at a pause near its middle.")]
    = "concat",
    sound_seconds: Annotated[float, typer.Option(help="Standard sound length (s).")] = 3.0,
    sound_dbfs: Annotated[float, typer.Option(help="RMS level of the standardised sound (dBFS).")] = -25.0,
    sample_rate: Annotated[int, typer.Option(help="Sample rate of the written audio.")] = 16000,
    task: Annotated[str, typer.Option(help="Value of the 'task' field.")] = "asr",
    seed: Annotated[int, typer.Option(help="Random seed for pairing and sound order.")] = 0,
    tags_out: Annotated[Optional[Path], typer.Option(help="Write the tags used, one per line.")] = None,
    on_missing: OnMissingOption = ON_MISSING_DEFAULT,
) -> None:
    """Embed labelled sounds between speech segments; transcripts get <label> tags (a clip of
    either manifest that does not exist: --on-missing fail stops, skip drops and reports it)."""
    check_missing_audio("data sound-insert", on_missing, speech, sounds, exists=path_exists)
    from swv.dataprep.sound_insert import sound_insert

    report = sound_insert(
        speech, sounds, out, audio_dir, mode=mode, sound_seconds=sound_seconds, sound_dbfs=sound_dbfs,
        sample_rate=sample_rate, task=task, seed=seed, tags_out=tags_out,
    )
    typer.echo(report.format())


@app.command("sft")
def sft_cmd(
    manifest: Annotated[Path, typer.Argument(help="Labelled input manifest.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Instruction manifest to write.")],
    task: Annotated[str, typer.Option(help=f"Task name; {', '.join(TEMPLATES)} have question wordings of their "
                                           "own, any other task gets generic ones.")],
    label_field: Annotated[str, typer.Option(help="Field holding the label.")] = "label",
    labels: Annotated[Optional[str], typer.Option(
        help="Comma-separated label set (default: every label found).")] = None,
    formats: Annotated[str, typer.Option(help=f"Comma-separated formats: {', '.join(FORMATS)}.")]
    = ",".join(FORMATS),
    cot: Annotated[bool, typer.Option("--cot", help="Chain of thought: transcription first, then the answer.")]
    = False,
    shuffle_options: Annotated[bool, typer.Option(
        "--shuffle-options/--no-shuffle-options", help="Shuffle multiple-choice options per record.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed for formats, wordings and option order.")] = 0,
) -> None:
    """Generate instruction/response records (direct, multiple-choice, sentence; optional CoT)."""
    from swv.dataprep.sft import build_sft

    report = build_sft(
        manifest, out, task=task, label_field=label_field, labels=_split_list(labels, "--labels"),
        formats=_split_list(formats, "--formats") or [], cot=cot, shuffle_options=shuffle_options, seed=seed,
    )
    typer.echo(report.format())


@app.command("stats")
def stats_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest to describe.")],
    plot: Annotated[Optional[Path], typer.Option(
        help=f"Write duration/text-length histograms to this image ({PLOT_HINT}).")]
    = None,
) -> None:
    """Counts, hours and histograms, overall, per task and per language. Only rows without a
    'duration' read their audio file's header; a missing one is counted and reported."""
    from swv.dataprep.stats import compute_stats, format_stats, plot_stats

    if plot is not None:
        from swv.core.plotting import require_plotting

        require_plotting("--plot")
    stats = compute_stats(manifest)
    typer.echo(format_stats(stats))
    if plot is not None:
        typer.echo(f"plot -> {plot_stats(stats, plot)}")


@app.command("cache-features")
def cache_features(
    recipe: Annotated[str, typer.Argument(help="Shipped recipe name or YAML path.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.path=value overrides.")] = None,
    stage: Annotated[str, typer.Option("--stage", help="Stage whose (frozen) encoder and data to cache.")] = "alignment",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clips per encoder batch.")] = 8,
    device: Annotated[str, typer.Option("--device", help=f"Device of the encoder. {DEVICE_HELP}")] = AUTO_DEVICE,
) -> None:
    """Run the stage's frozen encoder once over its audio and store the outputs (float16).

    `swv train` uses the cache automatically while it matches the encoder and its feature
    settings (a stale cache is ignored and rebuilt here); the cache lives at
    data.feature_cache (default <output_dir>/feature_cache).
    """
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import cache_stage_features

    loaded = load_recipe(recipe, overrides or [], default_registry())
    target, new, old = cache_stage_features(loaded, stage, batch_size=batch_size, device=device)
    typer.echo(f"feature cache {target}: {new} clip(s) encoded, {old} already cached")


@app.command("shard")
def shard_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest whose records (and audio files) to pack.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Empty folder for the shard-NNNNNN.tar files.")],
    clips_per_shard: Annotated[int, typer.Option(help="Records per shard.")] = 1000,
    max_audio_bytes: Annotated[int, typer.Option(
        help="Largest audio file packed (bytes); larger ones, and anything not a regular file, are dropped "
        "and reported.")] = DEFAULT_MAX_AUDIO_BYTES,
    on_missing: OnMissingOption = ON_MISSING_DEFAULT,
) -> None:
    """Pack a manifest into webdataset-style tar shards (<key>.<ext> audio + <key>.json record);
    a recipe reads them with a `shards: DIR` source.

    Audio files the manifest names but that do not exist stop the command before a shard is
    written (--on-missing fail, the default) or are left out and counted (--on-missing skip)."""
    from swv.data.shards import write_shards

    check_missing_audio("data shard", on_missing, manifest, exists=path_exists)
    report = write_shards(manifest, out, clips_per_shard=clips_per_shard, max_audio_bytes=max_audio_bytes)
    typer.echo(report.format())
