"""The demo recipe's three stages on the demo's own manifests (fake synthesizer: label tasks,
noisy dev, augmented clips), with tiny random-init models in place of the packaged weights: the
wiring of every new dataset into Stage III, one step per stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from swv.demo.data import build_dataset
from swv.demo.synth import SAMPLE_RATE, Voice
from swv.demo.text import DemoText, load_demo_text


class _Tones:
    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        t = np.arange(int((0.3 + 0.05 * len(text.split())) * SAMPLE_RATE)) / SAMPLE_RATE
        return (0.3 * np.sin(2 * np.pi * (100 + voice.pitch + voice.rate) * t)).astype(np.float32)


def test_demo_recipe_trains_every_stage_on_demo_manifests(tmp_path: Path, tiny_whisper_dir: Path, tiny_llama_dir: Path,
                                                           monkeypatch) -> None:
    from swv.core.metrics_log import step_records
    from swv.demo import replies
    from swv.demo.run import DemoOptions, build_feature_cache, load_demo_recipe, write_replies
    from swv.train.train_recipe import train

    monkeypatch.setattr(replies, "MAX_REPLY_TOKENS", 3)
    monkeypatch.setattr(replies, "complete_sentences", lambda reply: reply or "(empty)")  # a random LLM ends no sentence

    text = load_demo_text()
    small = DemoText(text.train_sentences[:48], text.dev_sentences[:4], text.heldout_sentences[:4], text.train_questions[:4],
                     text.heldout_questions[:2])
    options = DemoOptions(workdir=tmp_path, quick=True, overrides=[
        'precision="no"', *(f"stages.{i}.{k}" for i in range(3) for k in ("max_steps=1", "batch_size=2", "log_every=1"))])
    build_dataset(tmp_path / f"data{options.suffix}", small, _Tones(), renditions=1, log=lambda _: None)
    loaded = load_demo_recipe(options, tiny_whisper_dir, tiny_llama_dir, log=lambda _: None)
    write_replies(loaded, tiny_llama_dir, tmp_path / f"data{options.suffix}", log=lambda _: None)  # as swv demo does
    build_feature_cache(loaded, log=lambda _: None)
    train(loaded, stage="alignment")
    train(loaded, from_stage="shrinking")
    run_dir = Path(loaded.recipe.output_dir)
    for stage in ("alignment", "shrinking", "sft"):
        rows = step_records(run_dir / stage / "metrics.jsonl")
        assert rows and all(np.isfinite(r["loss"]) for r in rows), stage
    assert (run_dir / "sft" / "export").is_dir()
    mixture = next(json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines() if '"mixture"' in line)
    assert set(mixture["mixture"]) == {"asr_sft", "pitch", "sex", "rate", "qa", "reply"}
    assert all(w > 0 for w in mixture["mixture"].values())
