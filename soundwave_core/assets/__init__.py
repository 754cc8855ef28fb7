"""Packaged data files installed with swv.

* ``tiny_speech/``   -- espeak-ng speech and manifests (``train_asr.jsonl``, ``dev_asr.jsonl``,
  ``train_sft.jsonl``, ``dev_sft.jsonl``, ``text_qa.jsonl``) for the ``tiny`` recipe and tests.
* ``tiny_tokenizer/`` -- byte-level BPE tokenizer (vocab 512) with Llama-3-style chat tokens.

Both are rebuilt by ``scripts/make_tiny_assets.py``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path, PurePosixPath

__all__ = ["ASSET_PREFIX", "TINY_SPEECH", "TINY_TOKENIZER", "asset_path"]

#: Recipe values and data paths that start with this prefix name a packaged asset (``asset:tiny_speech/...``).
ASSET_PREFIX = "asset:"

TINY_SPEECH = "tiny_speech"
TINY_TOKENIZER = "tiny_tokenizer"


def asset_path(name: str = "") -> Path:
    """Filesystem path of a packaged asset, e.g. ``asset_path("tiny_tokenizer")`` or
    ``asset_path("tiny_speech/train_asr.jsonl")``; ``asset_path()`` is the assets directory.

    Raises :class:`FileNotFoundError` if the asset is missing.
    """
    parts = PurePosixPath(name.replace("\\", "/")).parts if name else ()
    if any(p in ("..", "/") for p in parts):
        raise ValueError(f"asset name must be a relative path inside swv/assets: {name!r}")
    resource = files(__name__)
    for part in parts:
        resource = resource.joinpath(part)
    # swv is installed as plain files (regular or editable install), so this is a real path.
    path = Path(str(resource))
    if not path.exists():
        raise FileNotFoundError(
            f"packaged asset {name!r} not found at {path}; rebuild it with `python scripts/make_tiny_assets.py`"
        )
    return path
