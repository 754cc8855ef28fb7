"""Turning dataset rows into model batches: audio decoding, encoder features, SpecAugment,
prompts and CTC targets."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal

import torch

from swv.core.errors import InputError
from swv.model.prompts import PromptBuilder
from swv.model.splice import IGNORE_INDEX
from swv.recipes.schema import SpecAugmentSettings

log = logging.getLogger(__name__)

#: optional row key: the seed of that row's SpecAugment masks (set by the training data loader)
AUGMENT_SEED = "augment_seed"


class SpecAugment:
    """Frequency and time masking (torchaudio) on each sample's valid feature frames.

    ``time_axis`` is the encoder's ``feature_time_axis``: the time axis of the batched
    ``[B, ...]`` features (``-1`` for ``[B, n_mels, T]``, ``1`` for ``[B, T, C]``).
    """

    def __init__(self, settings: SpecAugmentSettings, time_axis: int) -> None:
        import torchaudio.transforms as T

        self.settings = settings
        self.time_axis = time_axis
        self.freq = T.FrequencyMasking(settings.freq_mask_param) if settings.freq_mask_param else None
        self.time = T.TimeMasking(settings.time_mask_param) if settings.time_mask_param else None

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor, seeds: list[int] | None = None) -> torch.Tensor:
        """``features [B, ...]`` with time on ``time_axis`` of each sample. With ``seeds`` (one
        per sample), sample b's masks come from ``seeds[b]`` alone (the global RNG is left as it
        was): the same masks in any worker process, on any number of processes, after a resume."""
        if features.dim() != 3:
            raise InputError(
                f"data.spec_augment: masks [B, freq, time] features, but this encoder's input_features have shape "
                f"{tuple(features.shape)} (e.g. a raw waveform); set data.spec_augment.enabled: false"
            )
        out = features.clone()
        axis = self.time_axis if self.time_axis < 0 else self.time_axis - 1  # within one sample
        for b in range(out.shape[0]):  # data pipeline, not the model's forward pass
            sample = out[b].narrow(axis, 0, int(lengths[b]))
            view = sample if axis in (-1, sample.dim() - 1) else sample.transpose(0, 1)  # [freq, time]
            if seeds is None:
                self._mask(view)
                continue
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seeds[b])  # the CPU generator only
                self._mask(view)
        return out

    def _mask(self, view: torch.Tensor) -> None:
        """Mask one sample's ``[freq, time]`` view in place."""
        for _ in range(self.settings.num_freq_masks if self.freq else 0):
            view.copy_(self.freq(view))
        for _ in range(self.settings.num_time_masks if self.time else 0):
            view.copy_(self.time(view))


class SpeechCollator:
    """rows -> batch.

    ``mode="ctc"``: audio rows only: ``input_features``, ``feature_lengths``, ``ctc_targets``,
    ``ctc_target_lengths`` (no prompts, the backbone does not run).
    ``mode="lm"``: prompts for every row (right padded ``input_ids``/``attention_mask``/
    ``labels``) + audio of the rows that have audio, in row order, + CTC targets of those
    (transcript tokens; length 0 where a row has no transcript).
    A row may carry an ``augment_seed`` (:data:`AUGMENT_SEED`) for its SpecAugment masks.
    Unreadable audio raises (naming the manifest and line) unless the row's source is set to
    ``on_error: skip``; skipped rows are counted in ``self.skipped``.
    With a ``feature_cache`` (frozen encoders only), a batch whose audio is all cached gets
    ``encoder_embeds``/``encoder_lengths`` instead of features: no decoding, no encoder, and
    no SpecAugment (which acts on the encoder's input); ``cached_augment`` masks those outputs'
    time frames and channels instead.
    With ``clip_classes`` (``SpeechLM.clip_classes()``: ``{task: [label, ...]}``, sorted by task),
    a batch with audio gets ``clip_targets [B_a, K]``: per audio row and task, the index of the
    row's ``label`` among that task's labels when the row's ``task`` is that task, else -100.
    """

    def __init__(
        self,
        encoder: Any,
        tokenizer: Any,
        *,
        mode: Literal["ctc", "lm"],
        prompts: PromptBuilder | None = None,
        spec_augment: SpecAugmentSettings | None = None,
        cached_augment: SpecAugmentSettings | None = None,
        skip_sources: set[str] | None = None,
        with_ctc_targets: bool = True,
        feature_cache: Any = None,
        clip_classes: dict[str, list[str]] | None = None,
    ) -> None:
        if mode == "lm" and prompts is None:
            raise ValueError("lm mode needs a PromptBuilder")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.mode = mode
        self.prompts = prompts
        self.spec_augment = SpecAugment(spec_augment, encoder.feature_time_axis) if spec_augment and spec_augment.enabled else None
        # cached outputs are [B, T, D]: time on axis 1, the output channels take the frequency masks
        self.cached_augment = SpecAugment(cached_augment, 1) if cached_augment and cached_augment.enabled else None
        self.skip_sources = skip_sources or set()
        self.with_ctc_targets = with_ctc_targets
        self.feature_cache = feature_cache
        self.clip_classes = clip_classes or {}
        self.cache_hits = 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.skipped: Counter[str] = Counter()

    def _load(self, row: dict[str, Any]) -> Any:
        from swv.core.audio import load_audio

        try:
            wav = load_audio(row.get("audio_bytes") or row["audio"], self.encoder.sample_rate)
            limit = self.encoder.max_samples
            if limit is not None and wav.shape[0] > limit:
                rate = self.encoder.sample_rate
                raise InputError(
                    f"{row['audio']}: {wav.shape[0] / rate:.2f} s is longer than the encoder's {limit / rate:g} s "
                    "window that training takes per clip (drop or split long clips, e.g. swv data filter --max-duration)"
                )
            return wav
        except InputError as exc:
            where = f"{row.get('manifest', '?')}:{row.get('line', '?')}"
            if row.get("source") in self.skip_sources:
                self.skipped[row.get("source", "")] += 1
                log.warning("skipping %s: %s", where, exc)
                return None
            raise InputError(f"{where}: {exc}") from None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [r for r in rows if self.mode != "ctc" or (r.get("audio") and r.get("text"))]
        batch: dict[str, torch.Tensor] = {}
        cached = None
        if self.feature_cache is not None:
            cached = self.feature_cache.lookup([r["audio"] for r in rows if r.get("audio")])
        kept: list[dict[str, Any]] = []
        waves: list[Any] = []
        for row in rows:
            if row.get("audio") and cached is None:
                wav = self._load(row)
                if wav is None:
                    continue
                waves.append(wav)
            kept.append(row)
        if not kept:
            return {}
        audio_rows = [r for r in kept if r.get("audio")]
        if cached is not None and audio_rows:
            self.cache_hits += len(audio_rows)
            embeds, lengths, speech = cached
            if self.cached_augment is not None:
                embeds = self.cached_augment(embeds, lengths, self._augment_seeds(audio_rows))
            batch["encoder_embeds"], batch["encoder_lengths"], batch["encoder_speech_lengths"] = embeds, lengths, speech
        elif waves:
            features, lengths = self.encoder.extract_features(waves)
            if self.spec_augment is not None:
                features = self.spec_augment(features, lengths, self._augment_seeds(audio_rows))
            batch["input_features"], batch["feature_lengths"] = features, lengths
        if audio_rows and self.with_ctc_targets:
            batch.update(self._ctc_targets(audio_rows))
        if audio_rows and self.clip_classes:
            batch["clip_targets"] = self._clip_targets(audio_rows)
        if self.mode == "lm":
            batch.update(self._prompts(kept))
        batch["num_rows"] = torch.tensor(len(kept))
        return batch

    @staticmethod
    def _augment_seeds(audio_rows: list[dict[str, Any]]) -> list[int] | None:
        """Each audio row's masking seed, or None (the global generator) if any row has none."""
        seeds = [r.get(AUGMENT_SEED) for r in audio_rows]
        return None if None in seeds else seeds

    def _ctc_targets(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [self.tokenizer(r.get("text") or "", add_special_tokens=False)["input_ids"] if r.get("text") else [] for r in rows]
        longest = max((len(s) for s in seqs), default=0)
        targets = torch.zeros(len(seqs), max(longest, 1), dtype=torch.long)
        for i, s in enumerate(seqs):
            targets[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return {"ctc_targets": targets, "ctc_target_lengths": torch.tensor([len(s) for s in seqs], dtype=torch.long)}

    def _clip_targets(self, rows: list[dict[str, Any]]) -> torch.Tensor:
        """``[len(rows), K]``: each row's label index per task of ``clip_classes``, -100 elsewhere."""
        targets = torch.full((len(rows), len(self.clip_classes)), IGNORE_INDEX, dtype=torch.long)
        for k, (task, labels) in enumerate(self.clip_classes.items()):
            for i, row in enumerate(rows):
                if row.get("task") == task and row.get("label") in labels:
                    targets[i, k] = labels.index(row["label"])
        return targets

    def _prompts(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        assert self.prompts is not None
        encoded = []
        for r in rows:
            response = r.get("response") or r.get("target_text") or r.get("text") or ""
            language = r.get("target_language") or r.get("language")
            where = f"{r.get('manifest', '?')}:{r.get('line', '?')}"
            try:
                encoded.append(self.prompts.training_ids(r.get("instruction", ""), response, bool(r.get("audio")),
                                                         r.get("task", ""), language))
            except InputError as exc:
                raise InputError(f"{where}: {exc}") from None
        longest = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for i, (ids, lab) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
