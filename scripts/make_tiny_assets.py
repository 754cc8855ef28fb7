#!/usr/bin/env python
"""Regenerate the small packaged assets used by the ``tiny`` recipe and by the tests.

Writes (under ``soundwave_core/assets/`` by default):

* ``tiny_speech/``   -- espeak-ng speech (16 kHz, 16-bit, mono FLAC) for 120 short English
  sentences written for this project, plus swv JSONL manifests:
  ``train_asr.jsonl``, ``dev_asr.jsonl``, ``train_sft.jsonl``, ``dev_sft.jsonl``,
  ``text_qa.jsonl`` and a ``README.md``.
* ``tiny_tokenizer/`` -- a byte-level BPE tokenizer (vocab 512) trained on those texts, saved as a
  ``transformers`` fast tokenizer with Llama-3-style special tokens and chat template.

Needs the ``espeak-ng`` executable (only for this script; nothing at run or test time does) and
the project's Python environment (numpy, soundfile, torch/torchaudio, tokenizers, transformers).
Output is deterministic: running it twice gives byte-identical files on the same library versions.

Usage::

    python scripts/make_tiny_assets.py            # rebuild everything
    python scripts/make_tiny_assets.py --only tokenizer
    python scripts/make_tiny_assets.py --out /tmp/assets
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "soundwave_core" / "assets"

SAMPLE_RATE = 16_000
WORDS_PER_MINUTE = 130
# (voice, pitch) pairs; the speaker id is f"{voice}-p{pitch}". Low = -p 20, high = -p 80.
VOICES = ("en-us", "en", "en-gb-x-rp")
PITCHES = {"low": 20, "high": 80}
PEAK_LEVEL = 0.25  # -12 dBFS

# ---------------------------------------------------------------------------------------------
# Text written for this project (no third-party text). Transcripts: lowercase, no punctuation,
# numbers spelled out. Every 5th sentence (index 4, 9, 14, ...) goes to the held-out dev split.
# ---------------------------------------------------------------------------------------------
SENTENCES: tuple[str, ...] = (
    # weather
    "the sun is bright this morning",
    "it will rain later today",
    "the wind is cold and strong",
    "we saw snow on the hills",
    "the sky is grey and cloudy",
    "it is warm outside today",
    "a storm is coming from the west",
    "the fog is thick near the river",
    "summer days are long and hot",
    "the rain stopped after lunch",
    "there is ice on the road",
    "the clouds are moving very fast",
    "spring brings warm rain and green leaves",
    "the night was cold and clear",
    "we stayed inside during the storm",
    # food
    "i like bread with butter",
    "she made soup for dinner",
    "the apples are sweet and red",
    "we had rice and beans for lunch",
    "he drinks hot tea every morning",
    "the cake is in the oven",
    "please pass me the salt",
    "the milk is cold and fresh",
    "they ate fish by the lake",
    "my brother likes green grapes",
    "the orange juice is on the table",
    "we need eggs and flour for the cake",
    "the soup is too hot to eat",
    "she cut the bread into thin slices",
    "a cup of coffee costs two dollars",
    # numbers
    "there are three cats in the garden",
    "i have two brothers and one sister",
    "the bus leaves at seven",
    "five birds sat on the fence",
    "we walked ten miles yesterday",
    "the shop opens at nine",
    "she bought four new pencils",
    "there are twelve months in a year",
    "a week has seven days",
    "he is eight years old",
    "six children played in the park",
    "the train has twenty seats",
    "we need one more chair",
    "the book has one hundred pages",
    "add two and three to get five",
    # colours
    "the door is painted blue",
    "her coat is bright yellow",
    "the grass is green after rain",
    "he wore a black hat",
    "the flowers are pink and white",
    "my car is dark red",
    "the walls of the room are white",
    "she has a purple bag",
    "the leaves turn brown in autumn",
    "the sea looks deep blue today",
    "his shoes are old and grey",
    "we painted the fence green",
    "the sunset was orange and gold",
    "a white cloud floats over the town",
    "the pen writes in blue ink",
    # animals
    "the dog runs in the park",
    "a cat sleeps on the chair",
    "the horse is eating hay",
    "birds sing in the morning",
    "the fish swim in the pond",
    "a small mouse hid under the bed",
    "the cow gives us milk",
    "the ducks swim on the lake",
    "our dog likes long walks",
    "the bird built a nest in the tree",
    "a brown bear lives in the forest",
    "the sheep are in the field",
    "the rabbit ate the carrot",
    "the frog jumped into the water",
    "a bee flew over the flowers",
    # home and daily life
    "please close the window",
    "the lamp is on the desk",
    "i read a book before bed",
    "she opened the front door",
    "the kitchen is clean and bright",
    "we watch a film on friday",
    "he washed the dishes after dinner",
    "the clock on the wall is slow",
    "my room is at the top of the stairs",
    "the bed is soft and warm",
    "i put my keys on the table",
    "the garden has many tall trees",
    "she waters the plants every day",
    "the phone rang twice this morning",
    "we cleaned the house on sunday",
    # town and travel
    "the train was late again",
    "we went to the beach in june",
    "the school is near the park",
    "he rides his bike to work",
    "the market is busy on saturday",
    "they flew to the city last week",
    "the road to the village is long",
    "we will meet at the station",
    "the bridge crosses a wide river",
    "the library closes at six",
    "she walks to school with her friend",
    "the boat sailed across the bay",
    "my friend lives in a small town",
    "the shop sells fresh fruit",
    "we waited for the bus in the rain",
    # people
    "the teacher wrote on the board",
    "the baby is sleeping now",
    "he plays the piano very well",
    "they sang a happy song",
    "my mother makes good soup",
    "the children laughed at the joke",
    "she is learning to swim",
    "we play football after school",
    "the old man sat on the bench",
    "he found a coin on the street",
    "the doctor will see you soon",
    "my sister paints pictures of birds",
    "the team won the game today",
    "we thanked them for the gift",
    "good night and sleep well",
)

PITCH_INSTRUCTIONS = (
    "Is the speaker's voice high or low?",
    "Listen to the audio. Is the voice high or low?",
    "Does the speaker have a high voice or a low voice?",
)
ASR_INSTRUCTIONS = (
    "What did the speaker say?",
    "Transcribe the audio.",
    "Write down exactly what you hear.",
)

# Text-only instruction/response pairs written for this project (normal casing and punctuation).
TEXT_QA: tuple[tuple[str, str], ...] = (
    ("What colour is grass?", "Grass is green."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What do cows give us?", "Cows give us milk."),
    ("What is two plus three?", "Two plus three is five."),
    ("What colour is the sky on a sunny day?", "The sky is blue on a sunny day."),
    ("Name an animal that can fly.", "A bird can fly."),
    ("What do we use to write on paper?", "We use a pen or a pencil."),
    ("Is ice hot or cold?", "Ice is cold."),
    ("How many months are in a year?", "There are twelve months in a year."),
    ("Where do fish live?", "Fish live in water."),
    ("What do bees make?", "Bees make honey."),
    ("What do you wear on your feet?", "You wear shoes on your feet."),
    ("What day comes after Monday?", "Tuesday comes after Monday."),
    ("What is the opposite of high?", "The opposite of high is low."),
    ("What do plants need to grow?", "Plants need water and light to grow."),
    ("What colour is snow?", "Snow is white."),
    ("What is four minus one?", "Four minus one is three."),
    ("Where do people keep cold food?", "People keep cold food in the fridge."),
    ("Say hello in a friendly way.", "Hello, it is nice to meet you."),
    ("What sound does a dog make?", "A dog barks."),
    ("What do we call a baby cat?", "A baby cat is called a kitten."),
    ("Is the sun hot or cold?", "The sun is very hot."),
)

# Only used as extra tokenizer training text.
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant that can listen to speech.",
)

# ---------------------------------------------------------------------------------------------
# Tokenizer definition
# ---------------------------------------------------------------------------------------------
VOCAB_SIZE = 512
BOS = "<|begin_of_text|>"
EOS = "<|eot_id|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, START_HEADER, END_HEADER, PAD)  # ids 0..4, in this order
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama-3-style chat template. Each turn is
#   <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
# preceded once by <|begin_of_text|>; add_generation_prompt opens an assistant turn, and the
# model's answer ends with <|eot_id|> (the tokenizer's eos token). ``content`` may be a string or
# a list of {"type": "text", "text": ...} parts (other part types are skipped).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}"
    "{%- set content = message['content'] %}"
    "{%- else %}"
    "{%- set content = namespace(text='') %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{%- set content.text = content.text + part['text'] %}{%- endif %}"
    "{%- endfor %}"
    "{%- set content = content.text %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + content | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


# ---------------------------------------------------------------------------------------------
# Splits and item construction
# ---------------------------------------------------------------------------------------------
def check_sentences() -> None:
    if len(set(SENTENCES)) != len(SENTENCES):
        dup = sorted({s for s in SENTENCES if SENTENCES.count(s) > 1})
        raise SystemExit(f"duplicate sentences: {dup}")
    for s in SENTENCES:
        n = len(s.split())
        if not 4 <= n <= 9:
            raise SystemExit(f"sentence has {n} words (want 4-9): {s!r}")
        if s != s.lower() or not all(c.isalpha() or c == " " for c in s) or "  " in s:
            raise SystemExit(f"transcripts must be lowercase letters and single spaces: {s!r}")


def splits() -> dict[str, list[str]]:
    dev = [s for i, s in enumerate(SENTENCES) if i % 5 == 4]
    train = [s for i, s in enumerate(SENTENCES) if i % 5 != 4]
    return {"train": train, "dev": dev}


def speaker_for(split: str, index: int) -> tuple[str, str, int]:
    """Deterministic (voice, pitch name, pitch value): cycles through all 6 voice x pitch pairs so
    every split is balanced between high and low voices."""
    offset = 0 if split == "train" else 3  # dev starts elsewhere in the cycle
    k = (index + offset) % (len(VOICES) * len(PITCHES))
    voice = VOICES[k // len(PITCHES)]
    pitch_name = ("low", "high")[k % len(PITCHES)]
    return voice, pitch_name, PITCHES[pitch_name]


def speaker_id(voice: str, pitch: int) -> str:
    return f"{voice}-p{pitch}"


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------
def synthesize(text: str, voice: str, pitch: int, workdir: Path) -> np.ndarray:
    """espeak-ng -> float32 mono waveform at SAMPLE_RATE, leading/trailing silence trimmed."""
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    wav_path = workdir / "tmp.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", str(WORDS_PER_MINUTE), "-p", str(pitch), "-w", str(wav_path), text]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    data, sr = sf.read(str(wav_path), dtype="float32", always_2d=True)
    wav = data.mean(axis=1)
    if sr != SAMPLE_RATE:
        wav = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), sr, SAMPLE_RATE).numpy()
    return trim_silence(wav.astype(np.float32))


def trim_silence(wav: np.ndarray, threshold_db: float = -40.0, pad_s: float = 0.05) -> np.ndarray:
    """Cut leading/trailing audio whose 10 ms frame RMS is ``threshold_db`` below the peak RMS,
    keeping ``pad_s`` seconds of margin on each side."""
    frame = SAMPLE_RATE // 100
    n = len(wav) // frame
    rms = np.sqrt(np.mean(wav[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > threshold_db)[0]
    if len(loud) == 0:
        return wav
    pad = int(pad_s * SAMPLE_RATE)
    start = max(0, loud[0] * frame - pad)
    end = min(len(wav), (loud[-1] + 1) * frame + pad)
    return wav[start:end]


def write_flac(path: Path, wav: np.ndarray) -> float:
    import soundfile as sf

    # Peak-normalize every utterance to the same level (-12 dBFS): consistent loudness across
    # voices, and quieter 16-bit samples compress better (keeps the package under ~4 MB).
    wav = wav * (PEAK_LEVEL / float(np.abs(wav).max()))
    pcm = np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)
    sf.write(str(path), pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return len(pcm) / SAMPLE_RATE


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


README = """\
# tiny_speech

Small synthetic English speech set for the `tiny` recipe and the test suite.

* **Audio**: {n_total} utterances synthesized with [espeak-ng](https://github.com/espeak-ng/espeak-ng)
  with speed setting `-s {wpm}`, voices {voices}, pitch `-p 20` ("low") and `-p 80` ("high");
  resampled to 16 kHz, leading/trailing silence trimmed (50 ms kept), peak-normalized to -12 dBFS,
  stored as 16-bit mono FLAC under `audio/`.
* **Sentences**: {n_total} short plain-English sentences (4-9 words) written for this project;
  {n_train} in train and {n_dev} in a held-out dev split with no sentence in common. Each sentence
  is spoken once, by one voice/pitch pair chosen deterministically (balanced over 6 speakers).
* **Transcript convention**: all transcripts (`text` in `*_asr.jsonl` and the `response` of
  `asr_instruct` items) are **lowercase, without punctuation, numbers spelled out as words**.
  Instructions and the text-only QA pairs use normal English casing and punctuation.

## Manifests (swv JSONL; `audio` is relative to this directory)

| file | items | fields |
| --- | --- | --- |
| `train_asr.jsonl` | {n_train} | id, audio, text, task=`asr`, duration, language, speaker |
| `dev_asr.jsonl` | {n_dev} | same |
| `train_sft.jsonl` | {n_train_sft} | id, audio, task (`pitch` or `asr_instruct`), instruction, response, duration, language, speaker; `pitch` items also have label and options `["high", "low"]` |
| `dev_sft.jsonl` | {n_dev_sft} | same |
| `text_qa.jsonl` | {n_qa} | id, task=`text_qa`, instruction, response, language (no audio) |

`speaker` is `<espeak voice>-p<pitch>`, e.g. `en-gb-x-rp-p80`.

## Rebuilding

`python scripts/make_tiny_assets.py` (needs the `espeak-ng` program) regenerates this directory and
`../tiny_tokenizer/` deterministically. Nothing at run or test time needs espeak-ng.

## License

Generated by the swv project with espeak-ng from text written for the project; released under the
project's license (Apache-2.0). No third-party recordings or text are included.
"""


def build_speech(out_dir: Path) -> dict[str, int]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (e.g. `apt-get install espeak-ng`); it is needed to synthesize speech")
    check_sentences()
    parts = splits()
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split, sentences in parts.items():
            asr_rows, sft_rows = [], []
            for i, text in enumerate(sentences):
                voice, pitch_name, pitch = speaker_for(split, i)
                utt = f"{split}-{i:03d}"
                rel = f"audio/{utt}.flac"
                duration = round(write_flac(out_dir / rel, synthesize(text, voice, pitch, Path(tmp))), 3)
                common = {"audio": rel, "duration": duration, "language": "en", "speaker": speaker_id(voice, pitch)}
                asr_rows.append({"id": utt, "audio": rel, "text": text, "task": "asr", "duration": duration,
                                 "language": "en", "speaker": speaker_id(voice, pitch)})
                sft_rows.append({"id": f"{utt}-pitch", **common, "task": "pitch",
                                 "instruction": PITCH_INSTRUCTIONS[i % len(PITCH_INSTRUCTIONS)],
                                 "response": pitch_name, "label": pitch_name, "options": ["high", "low"]})
                sft_rows.append({"id": f"{utt}-asr", **common, "task": "asr_instruct",
                                 "instruction": ASR_INSTRUCTIONS[i % len(ASR_INSTRUCTIONS)], "response": text})
                print(f"  {utt}  {speaker_id(voice, pitch):16s} {duration:5.2f}s  {text}", file=sys.stderr)
            write_jsonl(out_dir / f"{split}_asr.jsonl", asr_rows)
            write_jsonl(out_dir / f"{split}_sft.jsonl", sft_rows)
            counts[f"{split}_asr"] = len(asr_rows)
            counts[f"{split}_sft"] = len(sft_rows)
    qa_rows = [{"id": f"qa-{i:03d}", "task": "text_qa", "instruction": q, "response": a, "language": "en"}
               for i, (q, a) in enumerate(TEXT_QA)]
    write_jsonl(out_dir / "text_qa.jsonl", qa_rows)
    counts["text_qa"] = len(qa_rows)
    (out_dir / "README.md").write_text(
        README.format(n_total=len(SENTENCES), wpm=WORDS_PER_MINUTE, voices=", ".join(f"`{v}`" for v in VOICES),
                      n_train=counts["train_asr"], n_dev=counts["dev_asr"], n_train_sft=counts["train_sft"],
                      n_dev_sft=counts["dev_sft"], n_qa=counts["text_qa"]),
        encoding="utf-8",
    )
    return counts


def tokenizer_corpus() -> list[str]:
    """Tokenizer training text, weighted roughly like the training data: transcripts, every
    instruction/response as it appears in a chat turn (role name, blank line, content), the
    text QA pairs and a couple of system prompts. Special tokens are not part of the text."""
    texts: list[str] = []
    for split, sentences in splits().items():
        for i, text in enumerate(sentences):
            _, pitch_name, _ = speaker_for(split, i)
            texts += [
                text,
                f"user\n\n{PITCH_INSTRUCTIONS[i % len(PITCH_INSTRUCTIONS)]}",
                f"assistant\n\n{pitch_name}",
                f"user\n\n{ASR_INSTRUCTIONS[i % len(ASR_INSTRUCTIONS)]}",
                f"assistant\n\n{text}",
            ]
    for q, a in TEXT_QA:
        texts += [f"user\n\n{q}", f"assistant\n\n{a}"]
    texts += [f"system\n\n{t}" for t in SYSTEM_PROMPTS] * 8
    return texts


def build_tokenizer(out_dir: Path) -> dict[str, int]:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Same pre-tokenization as Llama 3: its split regex, then byte-level mapping.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama 3: encoding with add_special_tokens=True prepends <|begin_of_text|>.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[START_HEADER, END_HEADER],
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    (out_dir / "README.md").write_text(
        "# tiny_tokenizer\n\n"
        f"Byte-level BPE tokenizer (vocab {len(fast)}) trained on the `tiny_speech` sentences, instructions\n"
        "and text QA pairs, for the `tiny` recipe's randomly initialised Llama-architecture LLM.\n"
        "Llama-3-style special tokens (`<|begin_of_text|>` = bos, `<|eot_id|>` = eos, `<|start_header_id|>`,\n"
        "`<|end_header_id|>`, `<|pad|>` = pad) and chat template. Not for real models.\n\n"
        "Rebuild with `python scripts/make_tiny_assets.py --only tokenizer`. Generated by the swv project;\n"
        "released under the project's license (Apache-2.0).\n",
        encoding="utf-8",
    )
    return {"vocab": len(fast), **{t: fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}}


def verify_tokenizer(path: Path) -> None:
    """Offline load, round trip, chat template, and a tiny Llama with vocab len(tok)+8."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    for text in list(SENTENCES) + [q + " " + a for q, a in TEXT_QA] + ["Zebras 123 quickly\n\té ü 你好!"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text, (text, tok.decode(ids))
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What colour is grass?"},
            {"role": "assistant", "content": "Grass is green."}]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert rendered.startswith(BOS) and rendered.count(EOS) == 3, rendered
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(f"{START_HEADER}assistant{END_HEADER}\n\n"), prompt
    cfg = LlamaConfig(vocab_size=len(tok) + 8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    import torch

    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == len(tok) + 8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="assets directory (default: %(default)s)")
    ap.add_argument("--only", choices=["speech", "tokenizer"], help="rebuild only one part")
    args = ap.parse_args(argv)

    from swv.core.io import atomic_directory

    if args.only in (None, "speech"):
        with atomic_directory(args.out / "tiny_speech") as tmp:
            tmp.chmod(0o755)  # mkdtemp creates 0700; package data must be world-readable
            counts = build_speech(tmp)
        print(f"tiny_speech: {counts}")
    if args.only in (None, "tokenizer"):
        with atomic_directory(args.out / "tiny_tokenizer") as tmp:
            tmp.chmod(0o755)
            info = build_tokenizer(tmp)
            verify_tokenizer(tmp)
        print(f"tiny_tokenizer: {info}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
