#!/usr/bin/env bash
# Create ./.venv (if missing) and install swv with its test/demo extras in strict editable mode.
# Idempotent: re-running only installs what changed. Needs Python >= 3.10 and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
# Some pip configurations warn about every unreachable local index; keep the real errors only.
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=70.1" wheel 2> >(grep -v "is ignored" >&2)
# torch and torchaudio come first, pinned to the same release (see pyproject.toml).
.venv/bin/python -m pip install --quiet "torch==2.9.1" "torchaudio==2.9.1" 2> >(grep -v "is ignored" >&2)
.venv/bin/python -m pip install --quiet -e ".[dev]" --config-settings editable_mode=strict 2> >(grep -v "is ignored" >&2)
.venv/bin/python -c "import swv, torch, torchaudio, transformers; print(f'swv {swv.__version__} ready (torch {torch.__version__}, transformers {transformers.__version__})')"
