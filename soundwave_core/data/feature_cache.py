"""A cache of frozen-encoder outputs, so a frozen-encoder stage (Stage I) is a pass over stored
features instead of re-running the encoder every epoch.

Layout of a cache directory::

    index.json            {"identity": {...}, "entries": {key: [shard, num_frames, audio_frames]}}
    shard-00000.safetensors  one float16 [T, D] tensor per key

The identity records the encoder's own settings (checkpoint, mode, feature parameters) and a
fingerprint of its weights; a key is the audio file's absolute path, size and modification
time. A cache whose identity differs from the current encoder is stale and is ignored; files
that changed on disk simply miss. Every file is written atomically; an interrupted build keeps
the shards it finished and continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from swv.core.io import atomic_write_json, follow_umask

log = logging.getLogger(__name__)
INDEX = "index.json"
#: 2: entries also record the frames that hold audio (caches of format 1 are rebuilt)
CACHE_FORMAT = 2
CACHE_DTYPE = torch.float16


def weights_fingerprint(module: nn.Module) -> str:
    """A cheap digest of a module's weights (shapes, leading values and sums)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(flat[:64].float().cpu().numpy().tobytes())
            digest.update(repr(float(flat.double().sum())).encode() if flat.numel() else b"")
    return digest.hexdigest()[:16]


def encoder_identity(encoder: Any) -> dict[str, Any]:
    return {**encoder.identity(), "weights": weights_fingerprint(encoder), "cache_dtype": str(CACHE_DTYPE),
            "format": CACHE_FORMAT}


def audio_key(path: str | os.PathLike[str]) -> str:
    st = os.stat(path)
    raw = f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


class FeatureCache:
    """Read side: ``lookup(paths)`` -> padded ``[B, T, D]`` encoder outputs + lengths, or None."""

    def __init__(self, directory: Path, entries: dict[str, list[Any]]) -> None:
        self.directory = directory
        self.entries = entries
        self._handles: dict[str, Any] = {}

    @classmethod
    def open(cls, directory: str | os.PathLike[str], encoder: Any) -> FeatureCache | None:
        """The cache at ``directory`` if it exists and matches ``encoder``; None otherwise."""
        directory = Path(directory)
        index = directory / INDEX
        if not index.is_file():
            return None
        data = json.loads(index.read_text())
        if data.get("identity") != encoder_identity(encoder):
            log.warning("feature cache %s was built for another encoder or settings; ignoring it", directory)
            return None
        return cls(directory, data.get("entries", {}))

    def __len__(self) -> int:
        return len(self.entries)

    def _tensor(self, key: str) -> torch.Tensor:
        shard = self.entries[key][0]
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(self.directory / shard), framework="pt")
        return handle.get_tensor(key)

    def lookup(self, paths: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """All of ``paths`` from the cache: float32 zero-padded outputs ``[B, T, D]``, their lengths
        ``[B]`` and how many frames hold audio ``[B]`` (``AudioState.speech_lengths``); None if
        any is missing."""
        try:
            keys = [audio_key(p) for p in paths]
        except OSError:
            return None
        if not all(k in self.entries for k in keys):
            return None
        tensors = [self._tensor(k) for k in keys]
        lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
        out = torch.zeros(len(tensors), int(lengths.max()), tensors[0].shape[1])
        for i, t in enumerate(tensors):
            out[i, : t.shape[0]] = t.float()
        # entries are [shard, frames, audio frames]
        speech = torch.tensor([self.entries[k][2] for k in keys], dtype=torch.long)
        return out, lengths, torch.minimum(speech, lengths)


def _reusable_entries(directory: Path, identity: dict[str, Any]) -> dict[str, list[Any]]:
    """The entries of an existing cache built for ``identity``; a stale cache's shards are deleted."""
    index_path = directory / INDEX
    if not index_path.is_file():
        return {}
    data = json.loads(index_path.read_text())
    if data.get("identity") == identity:
        return data.get("entries", {})
    log.warning("feature cache %s is stale (encoder or settings changed); rebuilding", directory)
    for old in directory.glob("shard-*.safetensors"):
        old.unlink()
    return {}


@dataclass
class _ShardWriter:
    """Collects encoder outputs and writes them as shards, updating the index after each shard."""

    directory: Path
    identity: dict[str, Any]
    entries: dict[str, list[Any]]
    pending: dict[str, torch.Tensor] = field(default_factory=dict)
    pending_speech: dict[str, int] = field(default_factory=dict)
    shard_no: int = field(init=False)

    def __post_init__(self) -> None:
        self.shard_no = len({entry[0] for entry in self.entries.values()})

    def add(self, key: str, tensor: torch.Tensor, audio_frames: int) -> None:
        self.pending[key] = tensor
        self.pending_speech[key] = audio_frames

    def write_index(self) -> None:
        atomic_write_json(self.directory / INDEX, {"identity": self.identity, "entries": self.entries})

    def flush(self) -> None:
        """Write the pending outputs as the next shard (atomically) and record them in the index."""
        if not self.pending:
            return
        name = f"shard-{self.shard_no:05d}.safetensors"
        tmp = self.directory / f".{name}.tmp"
        save_file(self.pending, str(tmp))
        follow_umask(tmp)
        os.replace(tmp, self.directory / name)
        for key, tensor in self.pending.items():
            self.entries[key] = [name, int(tensor.shape[0]), self.pending_speech[key]]
        self.write_index()
        self.shard_no += 1
        self.pending, self.pending_speech = {}, {}


def _encode_into(writer: _ShardWriter, encoder: Any, chunk: list[tuple[str, str]], device: str) -> None:
    """Encode the ``(path, key)`` pairs of ``chunk`` in one batch and add each clip's frames to ``writer``."""
    from swv.core.audio import load_audio

    waves = [load_audio(p, encoder.sample_rate) for p, _ in chunk]
    features, lengths = encoder.extract_features(waves)
    with torch.no_grad():
        state = encoder(features.to(device), lengths.to(device))
    speech = state.speech_mask().sum(dim=1).tolist()
    for (_, key), emb, n, audio_frames in zip(chunk, state.embeds, state.lengths.tolist(), speech):
        writer.add(key, emb[:n].to(CACHE_DTYPE).cpu().contiguous(), int(audio_frames))


def build_cache(
    directory: str | os.PathLike[str],
    encoder: Any,
    audio_paths: Iterable[str],
    *,
    batch_size: int = 8,
    shard_size: int = 256,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[int, int]:
    """Encode every path not cached yet. Returns ``(newly_cached, already_cached)``."""
    from tqdm.auto import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    identity = encoder_identity(encoder)
    entries = _reusable_entries(directory, identity)
    unique = list(dict.fromkeys(str(p) for p in audio_paths))
    todo = [(p, audio_key(p)) for p in unique]
    # batches of clips of similar length (file size as the proxy) pad less; encoders that mask
    # the padding (Whisper's trim mode) give a clip the same outputs in any batch
    todo = sorted(((p, k) for p, k in todo if k not in entries), key=lambda pk: os.path.getsize(pk[0]))
    already = len(unique) - len(todo)
    encoder = encoder.to(device).eval()
    writer = _ShardWriter(directory, identity, entries)

    bar = tqdm(total=len(todo), desc="caching encoder outputs", disable=not progress, unit="clip")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        _encode_into(writer, encoder, chunk, device)
        if len(writer.pending) >= shard_size:
            writer.flush()
        bar.update(len(chunk))
    writer.flush()
    bar.close()
    if not (directory / INDEX).is_file():
        writer.write_index()
    return len(todo), already
