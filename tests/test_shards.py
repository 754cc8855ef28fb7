"""Webdataset-style tar shards: `swv data shard` and `shards:` recipe sources."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from swv.cli.data import app
from swv.core.audio import load_audio
from swv.core.errors import InputError, UsageError
from swv.data.shards import SHARD_AUDIO_PREFIX, read_shard, write_shards
from swv.data.sources import load_source
from swv.recipes.schema import DatasetSpec

SR = 16000


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i, (seconds, fmt) in enumerate([(0.3, "FLAC"), (0.2, "WAV"), (0.4, "FLAC"), (0.25, "WAV"), (0.1, "FLAC")]):
        name = f"clips/c{i}.{fmt.lower()}"
        (tmp_path / "clips").mkdir(exist_ok=True)
        sf.write(tmp_path / name, (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32), SR, format=fmt)
        lines.append({"id": f"u{i}", "audio": name, "text": f"words {i}", "task": "asr", "language": "en"})
    lines.append({"id": "t", "instruction": "Say hi.", "response": "hi"})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_shard_layout(manifest: Path, tmp_path: Path) -> None:
    report = write_shards(manifest, tmp_path / "shards", clips_per_shard=2, show_progress=False)
    files = sorted((tmp_path / "shards").iterdir())
    assert [f.name for f in files] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert (report.written, report.shards) == (6, 3)
    with tarfile.open(files[0]) as tar:
        assert tar.getnames() == ["00000000.flac", "00000000.json", "00000001.wav", "00000001.json"]
        assert tar.extractfile("00000001.wav").read() == (tmp_path / "clips" / "c1.wav").read_bytes()
        meta = json.loads(tar.extractfile("00000000.json").read())
    assert meta["text"] == "words 0" and meta["duration"] == pytest.approx(0.3) and "audio" not in meta
    clips = list(read_shard(files[2]))
    assert [(k, r["id"], len(a) > 0) for k, r, a in clips] == [("00000004", "u4", True), ("00000005", "t", False)]


def test_shards_source_matches_the_manifest_source(manifest: Path, tmp_path: Path) -> None:
    write_shards(manifest, tmp_path / "shards", clips_per_shard=4, show_progress=False)
    sharded = load_source("s", DatasetSpec(shards=str(tmp_path / "shards")))
    plain = load_source("s", DatasetSpec(manifest=str(manifest)))
    assert len(sharded) == len(plain) == 6
    for a, b in zip(sharded, plain):
        assert {k: a[k] for k in ("id", "text", "task", "language", "instruction", "response", "source")} == \
               {k: b[k] for k in ("id", "text", "task", "language", "instruction", "response", "source")}
        assert a["duration"] == pytest.approx(b["duration"])
        if b["audio"]:
            assert a["audio"].startswith(SHARD_AUDIO_PREFIX)
            assert np.array_equal(load_audio(a["audio_bytes"], SR), load_audio(b["audio"], SR))
        else:
            assert a["audio"] == "" and a["audio_bytes"] == b""


def test_shard_command_and_errors(manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "clips" / "c2.flac").write_bytes(b"broken")
    result = CliRunner().invoke(app, ["shard", str(manifest), "-o", str(tmp_path / "out"), "--clips-per-shard", "3"])
    assert result.exit_code == 0, result.output
    assert "shard: wrote 5 record(s)" in result.output and "unreadable audio: 1" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    with pytest.raises(UsageError, match="already holds .tar shards"):
        write_shards(manifest, tmp_path / "out", show_progress=False)
    with pytest.raises(InputError, match="data.datasets.s.shards: .*no .tar shards found"):
        (tmp_path / "empty").mkdir()
        load_source("s", DatasetSpec(shards=str(tmp_path / "empty")))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "shard-000000.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(InputError, match="not a readable tar shard"):
        load_source("s", DatasetSpec(shards=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="exactly one of 'manifest', 'hf_dataset' or 'shards'"):
        DatasetSpec(manifest="m.jsonl", shards="x")


def test_train_from_shards(tmp_path: Path) -> None:
    from swv.assets import asset_path
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import train

    write_shards(asset_path("tiny_speech/train_asr.jsonl"), tmp_path / "shards", clips_per_shard=16,
                 show_progress=False)
    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", "data.datasets.asr.manifest=null",
                                  f"data.datasets.asr.shards={tmp_path / 'shards'}", "stages.0.max_steps=2",
                                  "stages.0.data.eval_datasets=[]", "stages.0.batch_size=4"], default_registry())
    train(loaded, stage="alignment")
    assert (tmp_path / "run" / "alignment" / "export" / "swv_config.json").is_file()


def _with_header_size(blob: bytes, size: bytes) -> bytes:
    """``blob`` (a tar) with its first header's size field set to ``size`` (checksum recomputed)."""
    header = bytearray(blob[:512])
    header[124:136] = size.ljust(12, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + blob[512:]


def test_a_lying_pax_header_size_is_not_allocated(tmp_path: Path) -> None:
    """Found by tests/test_fuzz_formats.py: tarfile reads a pax header member whole, at the size
    its header claims (8 GiB here), before any member can be checked; the shard reader clamps
    reads to the file, so this is a one-line error without a large allocation."""
    import io
    import tracemalloc

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("00000000.json")
        info.size, info.pax_headers = 2, {"comment": "x"}
        tar.addfile(info, io.BytesIO(b"{}"))
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(_with_header_size(buf.getvalue(), b"77777777777"))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="not a readable tar shard"):
            list(read_shard(shard))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_member_names_are_quoted_in_errors(tmp_path: Path) -> None:
    """Found by tests/test_fuzz_formats.py: a member name holding a newline split the error."""
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("a\nb.wav")
        info.type, info.linkname = tarfile.SYMTYPE, "x"
        tar.addfile(info)
    with pytest.raises(InputError) as caught:
        list(read_shard(shard))
    assert "\n" not in str(caught.value) and "'a\\nb.wav': a link member" in str(caught.value)


def test_shard_missing_audio_follows_on_missing(manifest: Path, tmp_path: Path, cli) -> None:
    """A clip the manifest names but that does not exist: the default stops before any shard is
    written (one line: how many, the first); ``--on-missing skip`` leaves it out and reports it."""
    (tmp_path / "clips" / "c1.wav").unlink()
    code, out, err = cli(["data", "shard", manifest, "--out", tmp_path / "out"])
    assert code != 0 and "Traceback" not in err
    assert "1 of 6 record(s) name an audio file that does not exist (first: " in err and "c1.wav" in err
    assert "--on-missing skip" in err and not (tmp_path / "out").exists()
    code, out, err = cli(["data", "shard", manifest, "--out", tmp_path / "out", "--on-missing", "skip"])
    assert code == 0, err
    assert "shard: wrote 5 record(s)" in out and "audio file not found" in out
