"""`streaming: true` Hugging Face sources: the temperature mixture over streams, length bucketing
within a pool, and exact resume from the sampler state."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from swv.core.errors import UsageError
from swv.data.sampler import MixtureSampler
from swv.data.streaming import load_streaming_stage_data
from swv.recipes.schema import DataSection, DatasetSpec

SR = 16000


def flac(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(SR * seconds), np.float32), SR, format="FLAC")
    return buf.getvalue()


def parquet(path: Path, n: int, prefix: str) -> Path:
    import datasets

    rng = np.random.default_rng(n)
    ds = datasets.Dataset.from_dict({
        "audio": [{"bytes": flac(float(d)), "path": None} for d in rng.uniform(0.05, 0.5, n).round(3)],
        "sentence": [f"{prefix} {i}" for i in range(n)],
        "key": [f"{prefix}{i}" for i in range(n)],
    }).cast_column("audio", datasets.Audio())
    ds.to_parquet(str(path))
    return path


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch) -> None:
    """``datasets`` sleeps 5 s whenever a shuffled parquet stream's iterator closes (a workaround
    for apache/arrow#45214): once per pass in training, dozens of times in these short tests."""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def section(tmp_path_factory) -> DataSection:
    root = tmp_path_factory.mktemp("streams")
    big = parquet(root / "big.parquet", 30, "big")
    small = parquet(root / "small.parquet", 10, "small")
    cols = {"text": "sentence", "id": "key"}
    return DataSection(datasets={
        "big": DatasetSpec(hf_dataset=str(big), streaming=True, num_rows=30, shuffle_buffer=8, columns=cols),
        "small": DatasetSpec(hf_dataset=str(small), columns=cols),  # an ordinary source in a streaming stage
    })


def sampler(section: DataSection, **kwargs) -> MixtureSampler:
    data = load_streaming_stage_data(section, ["big", "small"], seed=3)
    return MixtureSampler(data, 4, seed=5, pool_batches=2, **kwargs)


def take(it, n: int) -> list[list[str]]:
    return [[row["id"] for row in next(it)] for _ in range(n)]


def table(text: str) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """Lines ``row ids | epoch batch | the state after it`` as tuples."""
    out = []
    for line in text.strip().splitlines():
        ids, where, after = (part.strip() for part in line.split("|"))
        epoch, batch = map(int, where.split())
        out.append((ids, epoch, batch, tuple(map(int, after.split()))))
    return out


# the first 25 global batches: row ids | epoch, batch | state after: epoch, batch, pool, big.pass,
# big.offset, small.pass, small.offset; T = 1 growing by 5 per epoch
PINNED = table("""
    big6 big1 big4 small9       | 0 0 | 0 1 0 0 0 0 0
    big2 big7 small1 big10      | 0 1 | 0 0 1 0 6 0 2
    small5 big0 big8 big14      | 0 0 | 0 1 1 0 6 0 2
    small4 big15 big5 big12     | 0 1 | 0 0 2 0 12 0 4
    big22 big13 big3 big16      | 0 0 | 0 1 2 0 12 0 4
    big17 small2 small7 big19   | 0 1 | 0 0 3 0 18 0 6
    small3 big20 big29 big24    | 0 0 | 0 1 3 0 18 0 6
    big9 big21 big11 big23      | 0 1 | 0 0 4 0 25 0 7
    big18 big26 big27 small0    | 0 0 | 0 1 4 0 25 0 7
    big25 big28 small8 big1     | 0 1 | 1 0 0 1 1 0 9
    big8 small6 small6 big5     | 1 0 | 1 1 0 1 1 0 9
    big2 big7 small3 big0       | 1 1 | 1 0 1 1 6 1 2
    small1 small8 small4 big3   | 1 0 | 1 1 1 1 6 1 2
    big4 small2 small7 small0   | 1 1 | 1 0 2 1 8 1 8
    small2 small0 small9 small9 | 1 0 | 1 1 2 1 8 1 8
    small5 small3 small8 small6 | 1 1 | 1 0 3 1 8 2 6
    small5 small1 big10 big6    | 1 0 | 1 1 3 1 8 2 6
    big13 small4 big9 big15     | 1 1 | 1 0 4 1 13 2 9
    big19 big12 big26 big23     | 1 0 | 1 1 4 1 13 2 9
    big14 big18 big16 big17     | 1 1 | 2 0 0 1 21 2 9
    big21 small7 small7 big27   | 2 0 | 2 1 0 1 21 2 9
    big22 big20 big28 big24     | 2 1 | 2 0 1 1 27 3 1
    small8 big1 big11 big4      | 2 0 | 2 1 1 1 27 3 1
    big25 small3 small1 big29   | 2 1 | 2 0 2 2 2 3 4
    big3 small2 small0 small9   | 2 0 | 2 1 2 2 2 3 4
""")
# T = 2 and a frame budget of 90 frames (some pools split into more, smaller batches)
PINNED_BUDGET = table("""
    big4                   | 0 0 | 0 1 0 0 0 0 0
    small9                 | 0 1 | 0 2 0 0 0 0 0
    big6 big1              | 0 2 | 0 3 0 0 0 0 0
    big2 big7 small1 big10 | 0 3 | 0 0 1 0 6 0 2
    small7 big5            | 0 0 | 0 1 1 0 6 0 2
    small5 big0 big8       | 0 1 | 0 2 1 0 6 0 2
    big12                  | 0 2 | 0 3 1 0 6 0 2
    small4 small2          | 0 3 | 0 0 2 0 10 0 6
    big3 big16             | 0 0 | 0 1 2 0 10 0 6
    small0                 | 0 1 | 0 2 2 0 10 0 6
    small3 big14           | 0 2 | 0 3 2 0 10 0 6
    big17 big15            | 0 3 | 0 4 2 0 10 0 6
    big19                  | 0 4 | 0 0 3 0 16 0 8
    big22 big20 big13      | 0 0 | 0 1 3 0 16 0 8
    small6                 | 0 1 | 0 2 3 0 16 0 8
    big9 big11             | 0 2 | 0 3 3 0 16 0 8
    small8 big24           | 0 3 | 0 0 4 0 22 0 10
    big21 small6           | 0 0 | 0 1 4 0 22 0 10
    small3 big29 small4    | 0 1 | 0 2 4 0 22 0 10
    small0                 | 0 2 | 0 3 4 0 22 0 10
    small2                 | 0 3 | 0 4 4 0 22 0 10
    big23                  | 0 4 | 1 0 0 0 25 1 5
    big26                  | 1 0 | 1 1 0 0 25 1 5
    small7                 | 1 1 | 1 2 0 0 25 1 5
    small8 big18           | 1 2 | 1 3 0 0 25 1 5
""")
AFTER_KEYS = ["epoch", "batch", "pool", "big.pass", "big.offset", "small.pass", "small.offset"]


@pytest.mark.parametrize(("kwargs", "pinned"), [({"temperature": 1.0, "temperature_step": 5.0}, PINNED),
                                                ({"temperature": 2.0, "max_frames_per_batch": 90}, PINNED_BUDGET)])
def test_batches_and_positions_are_pinned(section: DataSection, kwargs: dict, pinned: list) -> None:
    s = sampler(section, **kwargs)
    shares = s.shares()
    got = []
    for _ in range(len(pinned)):
        share = next(shares)
        assert list(share.after) == AFTER_KEYS
        got.append((" ".join(row["id"] for row in share.indices), share.epoch, share.batch, tuple(share.after.values())))
    assert got == pinned
    assert s.batches_per_epoch() == 10


def test_exact_resume_mid_pool(section: DataSection) -> None:
    full = sampler(section, temperature=1.0, temperature_step=5.0)
    reference = take(iter(full), 25)  # crosses pools, passes and an epoch boundary (40 rows = 10 batches)
    first = sampler(section, temperature=1.0, temperature_step=5.0)
    it = iter(first)
    assert take(it, 7) == reference[:7]
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    assert state["pool"] == 3 and state["batch"] == 1
    resumed = sampler(section, temperature=1.0, temperature_step=5.0)
    resumed.load_state_dict(state)
    assert take(iter(resumed), 18) == reference[7:]


def test_mixture_and_passes(section: DataSection) -> None:
    s = sampler(section, temperature=1.0)
    rows = [row for batch in (next(it) for it in [iter(s)] for _ in range(60)) for row in batch]
    counts = Counter(row["source"] for row in rows)
    assert abs(counts["big"] / len(rows) - 0.75) < 0.08  # p ∝ n at T = 1
    big = Counter(row["id"] for row in rows if row["source"] == "big")
    assert len(big) == 30 and max(big.values()) - min(big.values()) <= 1  # pass after pass, each row once per pass
    stream = load_streaming_stage_data(DataSection(datasets={"big": s.source.streams[0].spec}), ["big"], 3)
    first = [stream.streams[0].next_row()["id"] for _ in range(60)]
    assert sorted(first[:30]) == sorted(first[30:]) == sorted(big)
    assert first[:30] != [f"big{i}" for i in range(30)]  # shuffled within the buffer
    assert first[:30] != first[30:]  # each pass is shuffled with its own seed
    assert all(row["audio_bytes"] and row["duration"] > 0 for row in rows)


def test_high_temperature_flattens_the_mixture(section: DataSection) -> None:
    s = sampler(section, temperature=1000.0)
    assert np.allclose(s.probabilities(0), [0.5, 0.5], atol=0.01)


def test_length_bucketing_within_a_pool(section: DataSection) -> None:
    s = sampler(section)
    batches = [next(it) for it in [iter(s)] for _ in range(2)]  # the first pool (2 batches)
    durations = [[row["duration"] for row in b] for b in batches]
    low, high = sorted(durations, key=max)
    assert max(low) <= min(high)


def test_streaming_source_needs_its_size(section: DataSection, tmp_path: Path) -> None:
    spec = section.datasets["big"].model_copy(update={"num_rows": None})
    with pytest.raises(UsageError, match="data.datasets.big: a streaming source needs 'num_rows'"):
        load_streaming_stage_data(DataSection(datasets={"big": spec}), ["big"], seed=0)
    from swv.data.sources import load_source

    with pytest.raises(UsageError, match="streaming source can only be a training stage's dataset"):
        load_source("big", section.datasets["big"])
    from swv.data.stage_data import load_stage_data

    with pytest.raises(UsageError, match=r"stages\[0\] eval: data source 'big' is streaming; only a stage's training"):
        load_stage_data(section, ["big"], "stages[0] eval")
    with pytest.raises(ValueError, match="'columns' and 'streaming' apply to 'hf_dataset' sources"):
        DatasetSpec(manifest="m.jsonl", streaming=True)


def test_train_and_resume_on_a_stream(tmp_path: Path, capsys) -> None:
    import datasets

    from swv.assets import asset_path
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import train

    rows = [json.loads(line) for line in asset_path("tiny_speech/train_asr.jsonl").read_text().splitlines()[:12]]
    base = asset_path("tiny_speech")
    ds = datasets.Dataset.from_dict({"audio": [{"bytes": (base / r["audio"]).read_bytes(), "path": None} for r in rows],
                                     "text": [r["text"] for r in rows]}).cast_column("audio", datasets.Audio())
    ds.to_parquet(str(tmp_path / "train.parquet"))

    def run(out: str) -> None:
        loaded = load_recipe("tiny", [f"output_dir={tmp_path / out}", "data.datasets.asr.manifest=null",
                                      f"data.datasets.asr.hf_dataset={tmp_path / 'train.parquet'}",
                                      "data.datasets.asr.streaming=true", "data.datasets.asr.num_rows=12",
                                      "data.datasets.asr.shuffle_buffer=4", "stages.0.max_steps=8",
                                      "stages.0.save_every=2", "stages.0.keep_last=10",
                                      "stages.0.data.eval_datasets=[]", "stages.0.batch_size=2"], default_registry())
        train(loaded, stage="alignment")

    def weights(out: str) -> dict:
        from safetensors.torch import load_file

        files = sorted((tmp_path / out / "alignment" / "export").rglob("*.safetensors"))
        return {f"{f.name}/{k}": v for f in files for k, v in load_file(str(f)).items()}

    run("a")
    run("b")
    # as if run b had stopped after step 4 (mid-epoch: 6 batches of 2 per epoch of 12 rows)
    stage = tmp_path / "b" / "alignment"
    shutil.rmtree(stage / "export")
    for step in (6, 8):
        shutil.rmtree(stage / "checkpoints" / f"step-{step:07d}")
    capsys.readouterr()
    run("b")
    assert "resuming stage alignment from" in capsys.readouterr().out
    a, b = weights("a"), weights("b")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
