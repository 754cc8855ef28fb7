"""The small state object adapters pass along the chain."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from swv.nn.vocab_logits import VocabLogits

#: label value that no loss counts (Hugging Face's and torch's ``ignore_index``)
IGNORE_INDEX = -100


@dataclass
class AudioState:
    """Audio representations flowing from the encoder through the adapter chain.

    Attributes:
        embeds: ``[B, T, D]`` frame embeddings; frames at ``t >= lengths[b]`` are padding
            (their values are unspecified and must be ignored via ``lengths``).
        lengths: ``[B]`` int64 number of valid frames per row.
        ctc_logits: ``[B, T_ctc, V]`` CTC logits over the backbone vocabulary, kept factored
            (hidden states + head, never materialised unless a caller asks), if an adapter
            produced them (the alignment adapter does).
        ctc_lengths: ``[B]`` valid lengths of ``ctc_logits``.
        keep_mask: ``[B, T_ctc]`` bool, the frames a shrinking adapter kept.
        aux_losses: named auxiliary losses (scalars) added by adapters. The training stage
            adds each with the weight its recipe's ``losses:`` gives that name (see
            :mod:`swv.train.stages`); the adapter declares the names in ``Adapter.aux_loss_names``.
        encoder_lengths: ``[B]`` valid encoder frames per row before the adapter chain (summed
            over windows), set on the chain's output by ``SpeechLM.encode_audio``.
        num_windows: ``[B]`` encoder windows per row (1 unless a long clip was windowed), set
            by ``SpeechLM.encode_audio``.
        speech_lengths: ``[B]`` how many of the valid frames hold audio (``<= lengths``); less than
            ``lengths`` when the encoder counts padding as valid (Whisper ``pad_to_30s``: the
            padded tail of the 30 s window). ``None``: every valid frame is audio. Adapters that
            change the frame rate map it; paper-semantics attention masks the frames past it.
        window_frames: frames of ``embeds`` per encoder window when long clips were windowed
            (frame ``t`` of a row belongs to window ``t // window_frames``), ``None`` when every
            row is one window. ``SpeechLM.encode_audio`` sets it before each adapter (the encoder
            window's frames through the earlier adapters' ``output_lengths``); attention layers
            attend within a window, so memory grows linearly with the clip's duration.
        utterance_embeds: ``[B, D_llm]`` one vector per row that an adapter computed for the
            whole clip (the utterance adapter); at the end of the chain ``SpeechLM.encode_audio``
            puts it before the row's audio tokens (:meth:`with_utterance_token`). ``None``: none.
        clip_targets: task -> ``[B]`` int64 class index of each row's label among the classes an
            adapter declares for that task (``Adapter.clip_classes``), -100 where the row has no
            label of that task. Set by ``SpeechLM.encode_audio`` in training; ``None``: no targets.
    """

    embeds: torch.Tensor
    lengths: torch.Tensor
    ctc_logits: VocabLogits | None = None
    ctc_lengths: torch.Tensor | None = None
    keep_mask: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    encoder_lengths: torch.Tensor | None = None
    num_windows: torch.Tensor | None = None
    speech_lengths: torch.Tensor | None = None
    window_frames: int | None = None
    utterance_embeds: torch.Tensor | None = None
    clip_targets: dict[str, torch.Tensor] | None = None

    def replace(self, **changes: object) -> AudioState:
        return replace(self, **changes)  # type: ignore[arg-type]

    def with_utterance_token(self) -> AudioState:
        """``utterance_embeds [B, D]`` as one more token before each row's ``embeds [B, T, D]`` ->
        ``[B, 1 + T, D]``, ``lengths + 1`` (``speech_lengths`` too); unchanged without one."""
        if self.utterance_embeds is None:
            return self
        token = self.utterance_embeds[:, None].to(self.embeds.dtype)
        speech = None if self.speech_lengths is None else self.speech_lengths + 1
        return self.replace(embeds=torch.cat([token, self.embeds], dim=1), lengths=self.lengths + 1,
                            speech_lengths=speech, utterance_embeds=None)

    def select(self, rows: torch.Tensor) -> AudioState:
        """The batch rows ``rows`` (an index tensor, in its order) of every per-row field; the
        auxiliary losses and ``window_frames`` stay as they are."""
        def pick(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.index_select(0, rows.to(value.device))

        targets = None if self.clip_targets is None else {task: pick(column) for task, column in self.clip_targets.items()}
        ctc = None if self.ctc_logits is None else self.ctc_logits.select_rows(rows.to(self.ctc_logits.hidden.device))
        return self.replace(
            embeds=pick(self.embeds), lengths=pick(self.lengths), ctc_logits=ctc, ctc_lengths=pick(self.ctc_lengths),
            keep_mask=pick(self.keep_mask), encoder_lengths=pick(self.encoder_lengths),
            num_windows=pick(self.num_windows), speech_lengths=pick(self.speech_lengths),
            utterance_embeds=pick(self.utterance_embeds), clip_targets=targets,
        )

    def padding_mask(self) -> torch.Tensor:
        """``[B, T]`` bool, True on valid frames."""
        return lengths_to_mask(self.lengths, self.embeds.shape[1])

    def speech_mask(self) -> torch.Tensor:
        """``[B, T]`` bool, True on valid frames that hold audio (not encoder padding)."""
        lengths = self.lengths if self.speech_lengths is None else torch.minimum(self.speech_lengths, self.lengths)
        return lengths_to_mask(lengths, self.embeds.shape[1])


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, T]`` bool mask, True where ``t < lengths[b]``."""
    max_len = int(lengths.max().item()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def to_blocks(embeds: torch.Tensor, lengths: torch.Tensor, block: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each row of ``embeds [B, T, D]`` into consecutive blocks of ``block`` frames (the last
    one zero-padded; one block per row when ``block`` is ``None`` or ``>= T``).

    Returns ``blocks [B * K, S, D]`` (row-major: row ``b``'s blocks are ``b * K ... b * K + K - 1``),
    their valid lengths ``[B * K]`` (from ``lengths [B]``) and ``owner [B * K]``, the row of each
    block; ``K = ceil(T / S)``, ``S = min(block, T)``.
    """
    batch, time, dim = embeds.shape
    size = time if block is None or block >= time else block
    size = max(size, 1)
    count = -(-time // size) if time else 1
    padded = count * size
    if padded != time:
        embeds = torch.cat([embeds, embeds.new_zeros(batch, padded - time, dim)], dim=1)
    starts = torch.arange(count, device=lengths.device) * size
    block_lengths = (lengths[:, None].long() - starts[None, :]).clamp(min=0, max=size).reshape(-1)
    owner = torch.arange(batch, device=lengths.device).repeat_interleave(count)
    return embeds.reshape(batch * count, size, dim), block_lengths, owner
