"""`swv data filter`: the paper's quality filters for ASR manifests (appendix A.2).

Filters, applied in this order; a row is rejected with the first one it fails:

1. **audio** (always): the header must be readable (``--verify-audio`` also decodes
   the whole file, catching truncated data and NaN samples). Reason ``unreadable_audio``.
   The duration is taken from the header; a different ``duration`` field is corrected.
2. **duration**: ``min_duration <= duration <= max_duration`` (3 s and 30 s: Whisper's
   window is 30 s, and very short clips unbalance training). Reasons ``too_short`` /
   ``too_long``.
3. **text length**: at most ``max_text_tokens`` (200) tokens. Tokens are whitespace
   separated words by default, or the tokens of a Hugging Face tokenizer (pass the
   LLM's to match training). Rows without a ``text`` are rejected as ``missing_text``
   whenever a text-based filter (3, 4 or 5) is on. Reason ``text_too_long``.
4. **frames per token**: encoder frames ``duration x frame_rate`` at most
   ``max_frames_per_token`` (100) times the token count. The default frame rate is
   100 per second, i.e. Whisper's log-mel frames (10 ms hop) that the encoder
   consumes, which is what the paper's "frame length" refers to; with 100 frames per
   second the default keeps rows with at least one token per second of audio. The
   frame count is continuous (``duration * frame_rate``), not rounded.
   Reason ``too_many_frames_per_token``.
5. **WER** (only with a transcriber): the word error rate of a reference ASR model's
   hypothesis against ``text`` must be strictly below ``max_wer`` (0.10). Both sides
   are lower-cased, punctuation other than in-word apostrophes is removed and
   whitespace collapsed before scoring. Audio is decoded and resampled to 16 kHz and
   transcribed ``wer_batch_size`` clips at a time. Reason ``high_wer``.

Every rejected row is written (if asked) to a rejected manifest with ``reject_reason``
(the key above) and ``reject_detail`` (the measured value and threshold).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swv.core.audio import audio_duration, load_audio, read_audio
from swv.core.errors import InputError, UsageError, first_line
from swv.core.io import atomic_file
from swv.core.progress import Report, count_lines, progress
from swv.data.manifest import (
    dump_record,
    read_manifest,
    rebase_record,
    record_label,
    resolve_audio,
)

#: Sample rate of the waveforms handed to a ``transcribe`` callable.
WER_SAMPLE_RATE = 16000

Transcribe = Callable[[list[np.ndarray]], list[str]]
TokenCounter = Callable[[str], int]

REASONS = (
    "unreadable_audio",
    "too_short",
    "too_long",
    "missing_text",
    "text_too_long",
    "too_many_frames_per_token",
    "high_wer",
)


@dataclass
class FilterConfig:
    """Thresholds of :func:`filter_manifest`; ``None`` switches a filter off."""

    min_duration: float | None = 3.0
    max_duration: float | None = 30.0
    max_text_tokens: int | None = 200
    max_frames_per_token: float | None = 100.0
    frame_rate: float = 100.0
    max_wer: float = 0.10
    wer_batch_size: int = 8
    verify_audio: bool = False

    def validate(self) -> None:
        """Raise :class:`UsageError` for thresholds that make no sense."""
        for name in ("min_duration", "max_duration", "max_frames_per_token"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.max_text_tokens is not None and self.max_text_tokens < 1:
            raise UsageError(f"--max-text-tokens must be >= 1, got {self.max_text_tokens}")
        if (self.min_duration is not None and self.max_duration is not None
                and self.min_duration > self.max_duration):
            raise UsageError(f"--min-duration ({self.min_duration}) is larger than --max-duration ({self.max_duration})")
        if self.frame_rate <= 0:
            raise UsageError(f"--frame-rate must be > 0, got {self.frame_rate}")
        if not 0 < self.max_wer:
            raise UsageError(f"--max-wer must be > 0, got {self.max_wer}")
        if self.wer_batch_size < 1:
            raise UsageError(f"--wer-batch-size must be >= 1, got {self.wer_batch_size}")


@dataclass
class FilterReport(Report):
    """Result of :func:`filter_manifest`: ``written`` rows kept, ``dropped`` per reason."""

    rejected_output: Path | None = None
    token_unit: str = "whitespace words"

    written_verb = "kept"
    dropped_verb = "rejected"


# --------------------------------------------------------------------------- measures


def whitespace_tokens(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def load_token_counter(tokenizer_dir: str | os.PathLike[str]) -> TokenCounter:
    """A token counter backed by a local Hugging Face tokenizer (no special tokens counted)."""
    path = Path(tokenizer_dir)
    if not path.is_dir():
        raise InputError(f"{path}: tokenizer folder not found")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises OSError / ValueError / KeyError
        first = first_line(exc)
        raise InputError(f"{path}: cannot load a tokenizer ({first})") from None

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count


_PUNCT = re.compile(r"[^\w\s']|_")
_EDGE_APOSTROPHES = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize_for_wer(text: str) -> str:
    """Lower-case, drop punctuation (keeping in-word apostrophes) and collapse whitespace."""
    text = _PUNCT.sub(" ", text.lower().replace("\u2019", "'"))
    text = _EDGE_APOSTROPHES.sub(" ", text)
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference`` after :func:`normalize_for_wer`.

    An empty (normalised) reference scores 0 against an empty hypothesis and 1 otherwise.
    """
    import jiwer

    ref, hyp = normalize_for_wer(reference), normalize_for_wer(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


class WhisperTranscriber:
    """Batched greedy transcription with a local Whisper checkpoint (transformers).

    ``model_dir`` must hold a ``WhisperForConditionalGeneration`` checkpoint and its
    ``WhisperProcessor`` files. Clips longer than 30 s are truncated by the feature
    extractor, as in Whisper itself. The language is detected by the model.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str = "cpu") -> None:
        from swv.core.devices import resolve_device

        device = str(resolve_device(device))  # "auto": CUDA, then MPS, then CPU
        path = Path(model_dir)
        if not path.is_dir():
            raise InputError(f"{path}: Whisper model folder not found")
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        try:
            self.processor = WhisperProcessor.from_pretrained(str(path), local_files_only=True)
            self.model = WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            first = first_line(exc)
            raise InputError(f"{path}: cannot load a Whisper checkpoint ({first})") from None
        self.model.to(device).eval()
        self.device = device
        self._torch = torch
        self.max_new_tokens = max(1, self.model.config.max_target_positions // 2)
        self.model.generation_config.max_length = None

    def __call__(self, wavs: list[np.ndarray]) -> list[str]:
        """Transcribe 16 kHz mono waveforms; one string per input."""
        if not wavs:
            return []
        feats = self.processor.feature_extractor(
            [np.asarray(w, dtype=np.float32) for w in wavs],
            sampling_rate=WER_SAMPLE_RATE,
            return_tensors="pt",
            return_attention_mask=True,
        )
        with self._torch.inference_mode():
            ids = self.model.generate(
                feats["input_features"].to(self.device),
                attention_mask=feats["attention_mask"].to(self.device),
                max_new_tokens=self.max_new_tokens,
            )
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


# --------------------------------------------------------------------------- filtering


@dataclass
class _Row:
    record: dict[str, Any]
    label: str
    audio: Path
    text: str = ""
    reason: str | None = None
    detail: str = ""
    pending: bool = False

    def reject(self, reason: str, detail: str) -> None:
        self.reason, self.detail, self.pending = reason, detail, False


class _Checker:
    """Applies the filters of one run to rows, recording changes in ``report``."""

    def __init__(self, cfg: FilterConfig, counter: TokenCounter, transcribe: Transcribe | None,
                 report: FilterReport) -> None:
        self.cfg, self.counter, self.transcribe, self.report = cfg, counter, transcribe, report
        self.text_filters = (cfg.max_text_tokens is not None or cfg.max_frames_per_token is not None
                             or transcribe is not None)

    def check(self, row: _Row) -> None:
        """Apply the cheap filters; mark the row pending when only the WER check is left."""
        cfg = self.cfg
        try:
            if not row.audio.is_file():
                raise InputError(f"{row.audio}: audio file not found")
            duration = audio_duration(row.audio)
            if cfg.verify_audio:
                read_audio(row.audio)
        except InputError as exc:
            row.reject("unreadable_audio", str(exc))
            return
        old = row.record.get("duration")
        if old is None:
            self.report.changed["duration set from audio header"] += 1
        elif not isinstance(old, (int, float)) or abs(float(old) - duration) > 1e-3:
            self.report.changed["duration corrected from audio header"] += 1
        row.record["duration"] = round(duration, 6)

        if cfg.min_duration is not None and duration < cfg.min_duration:
            row.reject("too_short", f"duration {duration:.3f} s < {cfg.min_duration:g} s")
            return
        if cfg.max_duration is not None and duration > cfg.max_duration:
            row.reject("too_long", f"duration {duration:.3f} s > {cfg.max_duration:g} s")
            return
        if not self.text_filters:
            return
        text = row.record.get("text")
        n_tokens = self.counter(text) if isinstance(text, str) and text.strip() else 0
        if n_tokens == 0:
            row.reject("missing_text", "no 'text' transcript to check")
            return
        row.text = str(text)
        if cfg.max_text_tokens is not None and n_tokens > cfg.max_text_tokens:
            row.reject("text_too_long", f"{n_tokens} tokens > {cfg.max_text_tokens}")
            return
        if cfg.max_frames_per_token is not None:
            frames = duration * cfg.frame_rate
            if frames > cfg.max_frames_per_token * n_tokens:
                row.reject("too_many_frames_per_token",
                           f"{frames:.0f} frames for {n_tokens} tokens "
                           f"({frames / n_tokens:.1f} > {cfg.max_frames_per_token:g})")
                return
        if self.transcribe is not None:
            row.pending = True

    def run_wer(self, rows: list[_Row]) -> None:
        """Decode, transcribe (one call) and score the pending ``rows``."""
        assert self.transcribe is not None
        wavs: list[np.ndarray] = []
        ready: list[_Row] = []
        for row in rows:
            try:
                wavs.append(load_audio(row.audio, WER_SAMPLE_RATE))
                ready.append(row)
            except InputError as exc:
                row.reject("unreadable_audio", str(exc))
        hyps = list(self.transcribe(wavs)) if wavs else []
        if len(hyps) != len(wavs):
            raise ValueError(f"transcribe returned {len(hyps)} hypotheses for {len(wavs)} waveforms")
        for row, hyp in zip(ready, hyps):
            row.pending = False
            wer = word_error_rate(row.text, hyp)
            if wer >= self.cfg.max_wer:
                row.reject("high_wer", f"WER {wer:.3f} >= {self.cfg.max_wer:g} (hypothesis: {hyp[:80]!r})")


@dataclass
class _Output:
    """Writes checked rows in input order to the kept (and rejected) files, holding rows back
    until the WER batch they wait for is complete."""

    checker: _Checker
    manifest: Path
    out: Path
    rejected_path: Path | None
    kept_fh: Any
    rej_fh: Any
    report: FilterReport
    batch_size: int
    buffer: list[_Row] = field(default_factory=list)  # rows in input order, waiting for a WER batch
    n_pending: int = 0

    def add(self, row: _Row) -> None:
        self.buffer.append(row)
        self.n_pending += row.pending
        if self.n_pending == 0 or self.n_pending >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Run the WER check on the buffered pending rows, then write every buffered row."""
        pending = [r for r in self.buffer if r.pending]
        if pending:
            self.checker.run_wer(pending)
        for row in self.buffer:
            self.write(row)
        self.buffer.clear()
        self.n_pending = 0

    def write(self, row: _Row) -> None:
        if row.reason is None:
            self.kept_fh.write(dump_record(rebase_record(row.record, self.manifest, self.out)))
            self.report.written += 1
            return
        self.report.drop(row.reason, f"{row.label}: {row.detail}")
        if self.rejected_path is not None:
            rec = rebase_record(row.record, self.manifest, self.rejected_path)
            rec["reject_reason"], rec["reject_detail"] = row.reason, row.detail
            self.rej_fh.write(dump_record(rec))


def _add_notes(report: FilterReport, cfg: FilterConfig, token_unit: str, wer_on: bool, wer_model_name: str,
               rejected_path: Path | None) -> None:
    report.notes.append(f"text length counted in {token_unit}")
    if cfg.max_frames_per_token is not None:
        report.notes.append(f"frames counted at {cfg.frame_rate:g} per second of audio")
    report.notes.append(f"WER filter: {'on, ' + wer_model_name if wer_on else 'off'}")
    if rejected_path is not None:
        report.notes.append(f"rejected rows -> {rejected_path}")


def filter_manifest(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    rejected: str | os.PathLike[str] | None = None,
    config: FilterConfig | None = None,
    count_tokens: TokenCounter | None = None,
    token_unit: str = "whitespace words",
    transcribe: Transcribe | None = None,
    wer_model_name: str = "reference ASR model",
    show_progress: bool = True,
) -> FilterReport:
    """Filter ``manifest`` into ``out`` (kept rows) and optionally ``rejected``.

    ``count_tokens`` defaults to :func:`whitespace_tokens` (``token_unit`` names the unit
    in the summary). The WER filter runs only when ``transcribe`` is given: it receives
    lists of at most ``config.wer_batch_size`` 16 kHz waveforms and returns one
    hypothesis per waveform. Output rows keep the input order; relative audio paths are
    rewritten for the output manifests' directories. Both outputs are atomic: if anything
    fails, neither file is created (or an existing one is left as it was).
    """
    cfg = config or FilterConfig()
    cfg.validate()
    manifest, out = Path(manifest), Path(out)
    rejected_path = Path(rejected) if rejected is not None else None
    report = FilterReport(command="filter", output=out, rejected_output=rejected_path, token_unit=token_unit)
    checker = _Checker(cfg, count_tokens or whitespace_tokens, transcribe, report)
    total = count_lines(manifest) if manifest.is_file() else None

    with atomic_file(out) as kept_fh, (atomic_file(rejected_path) if rejected_path else _NullFile()) as rej_fh:
        output = _Output(checker, manifest, out, rejected_path, kept_fh, rej_fh, report, cfg.wer_batch_size)
        for line_no, record in progress(read_manifest(manifest), total=total, desc="filter", enabled=show_progress):
            row = _Row(record=dict(record), label=record_label(manifest, line_no, record),
                       audio=resolve_audio(manifest, record))
            checker.check(row)
            output.add(row)
        output.flush()

    _add_notes(report, cfg, token_unit, transcribe is not None, wer_model_name, rejected_path)
    return report


class _NullFile:
    """Stands in for the rejected-rows file when none is requested."""

    def __enter__(self) -> _NullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, _text: str) -> int:
        return 0
