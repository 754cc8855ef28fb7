#!/usr/bin/env bash
# Create ./.venv (if missing) and install swv with its test extras in strict editable mode.
# Idempotent: re-running only installs what changed. Needs Python >= 3.10 and access to PyPI.
# The full pip output goes to .venv/setup.log; it is shown only if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
LOG=.venv/setup.log
: > "$LOG"
step() {
  echo "setup: $1"
  shift
  if ! "$@" >> "$LOG" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$LOG" | tail -n 40 >&2
    echo "setup: failed: $* (full log: $LOG)" >&2
    exit 1
  fi
}
step "pip and build tools" .venv/bin/python -m pip install --upgrade "pip>=24" "setuptools>=77" wheel
# torch and torchaudio must be the same release (see pyproject.toml).
step "torch 2.9.1 + torchaudio 2.9.1" .venv/bin/python -m pip install "torch==2.9.1" "torchaudio==2.9.1"
step "swv (editable, strict) with test extras" .venv/bin/python -m pip install -e ".[dev]" --config-settings editable_mode=strict
.venv/bin/python -c "import swv, torch, transformers; print(f'setup: swv {swv.__version__} ready (torch {torch.__version__}, transformers {transformers.__version__})')"
