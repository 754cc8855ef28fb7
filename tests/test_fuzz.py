"""Property-based fuzzing (hypothesis) of what users hand to swv: recipes, overrides,
manifests, audio files and model directories. Every generated input must end in success or in
exactly one ``error:`` line with a non-zero exit, never a traceback.

The examples are derandomized and few (the ``ci`` profile: the whole module runs in about a
minute), so CI is reproducible. Fuzz longer with another profile, e.g.::

    SWV_FUZZ_PROFILE=long .venv/bin/pytest tests/test_fuzz*.py          # 6x the examples, random
    SWV_FUZZ_PROFILE=long SWV_FUZZ_SCALE=400 .venv/bin/pytest tests/test_fuzz.py

A failure prints the smallest input hypothesis found (reproduce it with ``@example``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SCALE = int(os.environ["SWV_FUZZ_SCALE"])  # see _fuzz_profiles in tests/conftest.py


def budget(examples: int) -> settings:
    """``examples`` per test in CI, ``SWV_FUZZ_SCALE`` times more otherwise."""
    return settings(max_examples=examples * SCALE)


@pytest.fixture
def cli(cli):
    """``run(args) -> (exit_code, stderr)`` through swv's real entry point (conftest's ``cli``)."""
    return lambda args: cli(args)[::2]


def assert_clean(code: int, err: str) -> None:
    """Success, or one ``error:`` line and a non-zero exit; never a traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 0:
        assert not errors, err
    else:
        assert len(errors) == 1, err


# -- values ------------------------------------------------------------------------------------
SMALL_INTS = st.integers(min_value=-3, max_value=64)
SCALARS = st.one_of(st.none(), st.booleans(), SMALL_INTS, st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.text(string.printable, max_size=12))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(string.ascii_lowercase, min_size=1,
                                                                                  max_size=8), inner, max_size=3)),
                       max_leaves=8)


def tiny_recipe() -> dict:
    from swv.recipes.loader import compose, shipped_recipes

    return compose(shipped_recipes()["tiny"])


def _paths(node, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_paths(value, (*prefix, i)))
    return out


RECIPE_PATHS = _paths(tiny_recipe())


def _set(node, path, value) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _delete(node, path) -> None:
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


# -- recipes -------------------------------------------------------------------------------------
@budget(20)
@given(edits=st.lists(st.tuples(st.sampled_from(RECIPE_PATHS), st.one_of(JSONISH, st.just("<delete>"))),
                      min_size=1, max_size=4))
def test_mutated_recipes(cli, tmp_path: Path, edits) -> None:
    data = tiny_recipe()
    for path, value in edits:
        try:
            _delete(data, path) if value == "<delete>" else _set(data, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the path
    data["output_dir"] = str(tmp_path / "run") if not isinstance(data.get("output_dir"), str) else data["output_dir"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    assert_clean(*cli(["recipe", "validate", recipe]))
    assert_clean(*cli(["recipe", "show", recipe]))


@budget(15)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
       as_bytes=st.booleans())
def test_arbitrary_recipe_files(cli, tmp_path: Path, text: str, as_bytes: bool) -> None:
    recipe = tmp_path / "r.yaml"
    if as_bytes:
        recipe.write_bytes(text.encode("latin-1", errors="replace"))
    else:
        recipe.write_text(text, encoding="utf-8")
    assert_clean(*cli(["recipe", "validate", recipe]))


# -- overrides -----------------------------------------------------------------------------------
KEYS = st.one_of(st.sampled_from([".".join(map(str, p)) for p in RECIPE_PATHS]),
                 st.text(string.ascii_letters + string.digits + "._-", max_size=20))
VALUES = st.one_of(JSONISH.map(lambda v: json.dumps(v, allow_nan=True)), st.text(max_size=30))


@budget(25)
@given(overrides=st.lists(st.one_of(st.tuples(KEYS, VALUES).map("=".join), st.text(max_size=20)), max_size=4))
def test_overrides(cli, overrides: list[str]) -> None:
    args = [o for o in overrides if not o.startswith("-")]  # options are click's own business
    assert_clean(*cli(["recipe", "show", "tiny", *args]))


# -- manifests -----------------------------------------------------------------------------------
def _audio_values() -> st.SearchStrategy:
    from swv.assets import asset_path

    real = str(asset_path("tiny_speech/audio/train-000.flac"))
    return st.one_of(st.just(real), st.just("missing.wav"), st.just("."), st.just("m.jsonl"), SCALARS, JSONISH)


RECORD = st.dictionaries(
    st.sampled_from(["id", "audio", "text", "duration", "instruction", "response", "task", "language", "tags",
                     "target_text", "label", "options"]),
    st.one_of(_audio_values(), st.text(max_size=20)),
    max_size=6,
)
LINE = st.one_of(RECORD.map(lambda r: json.dumps(r, allow_nan=True)), st.text(max_size=40))


@budget(20)
@given(lines=st.lists(LINE, max_size=5))
def test_manifests(cli, tmp_path: Path, lines: list[str]) -> None:
    from swv.core.errors import SwvError
    from swv.data.sources import load_source
    from swv.recipes.schema import DatasetSpec

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert_clean(*cli(["data", "stats", manifest]))
    try:
        load_source("fuzz", DatasetSpec(manifest=str(manifest)), cache_dir=tempfile.mkdtemp(dir=tmp_path))
    except SwvError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()


# -- audio files -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_model(save_tiny_model) -> Path:
    return save_tiny_model("fuzz", bundle=True)


def _sound_file(rate: int, channels: int, frames: int, fmt: str, subtype: str, cut: float | None, seed: int) -> bytes:
    data = np.random.default_rng(seed).uniform(-1, 1, (frames, channels)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    blob = buf.getvalue()
    return blob if cut is None else blob[: int(len(blob) * cut)]


AUDIO_BYTES = st.one_of(
    st.binary(max_size=400),
    st.builds(_sound_file, rate=st.sampled_from([1, 100, 8000, 16000, 44100, 192000]), channels=st.integers(1, 3),
              frames=st.integers(0, 8000), fmt=st.sampled_from(["WAV"]), subtype=st.sampled_from(["PCM_16", "FLOAT"]),
              cut=st.one_of(st.none(), st.floats(0, 1)), seed=st.integers(0, 3)),
    st.builds(_sound_file, rate=st.just(16000), channels=st.just(1), frames=st.integers(1, 4000),
              fmt=st.just("FLAC"), subtype=st.just("PCM_16"), cut=st.one_of(st.none(), st.floats(0, 1)),
              seed=st.just(0)),
)


@budget(15)
@given(blob=AUDIO_BYTES)
def test_audio_files(cli, fuzz_model: Path, tmp_path: Path, blob: bytes) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(blob)
    assert_clean(*cli(["infer", fuzz_model, clip, "--max-new-tokens", 1]))


# -- model directories -------------------------------------------------------------------------------
MUTATIONS = st.sampled_from(["truncate", "garbage", "empty", "delete", "json"])


@pytest.fixture(scope="module")
def fuzz_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzzclip") / "clip.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.1, 0.1, 16000).astype(np.float32), 16000)
    return path


def _mutate_json(text: str, data: st.DataObject) -> str:
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    paths = _paths(obj)
    if not paths:
        return json.dumps(data.draw(JSONISH))
    path = data.draw(st.sampled_from(paths))
    if data.draw(st.booleans()):
        _delete(obj, path)
    else:
        _set(obj, path, data.draw(JSONISH))
    return json.dumps(obj, allow_nan=True)


@budget(20)
@given(data=st.data())
def test_model_directories(cli, fuzz_model: Path, fuzz_clip: Path, tmp_path: Path, data: st.DataObject) -> None:
    model = tmp_path / "model"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(fuzz_model, model)
    files = sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file())
    for _ in range(data.draw(st.integers(1, 2))):
        name = data.draw(st.sampled_from(files))
        file = model / name
        if not file.exists():
            continue
        how = data.draw(MUTATIONS)
        blob = file.read_bytes()
        if how == "truncate":
            file.write_bytes(blob[: data.draw(st.integers(0, max(len(blob) - 1, 0)))])
        elif how == "garbage":
            file.write_bytes(data.draw(st.binary(min_size=1, max_size=256)))
        elif how == "empty":
            file.write_bytes(b"")
        elif how == "delete":
            file.unlink()
        else:
            file.write_text(_mutate_json(blob.decode("utf-8", errors="replace"), data))
    assert_clean(*cli(["infer", model, fuzz_clip, "--max-new-tokens", 1]))
