"""Issue 25 (hardening, round two): special files and unbounded reads, tar shards, corpus
readers, silent substitutions in model directories, one-line unpickling and sandbox refusals.
One regression test (or a parametrized few) per finding."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from swv.core.errors import InputError

SR = 16_000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.wav"
    os.mkfifo(path)
    return path


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def edit_config(model: Path, change) -> None:
    config = json.loads((model / "swv_config.json").read_text())
    change(config)
    text = json.dumps(config)
    (model / "swv_config.json").write_text(text)
    (model / "config.json").write_text(text)


# -- 1. special files and unbounded reads -----------------------------------------------------
@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_open_regular_refuses_special_files(tmp_path: Path, fifo: Path, kind: str) -> None:
    from swv.core.io import open_regular, read_regular, regular_file

    path = {"directory": tmp_path, "fifo": fifo, "device": Path("/dev/zero")}[kind]
    expected = {"directory": "is a directory", "fifo": "is a named pipe", "device": "is a character device"}[kind]
    for call in (lambda: open_regular(path, "thing"), lambda: read_regular(path, "thing", 10),
                 lambda: regular_file(path, "thing")):
        with pytest.raises(InputError, match=expected):
            call()


def test_read_regular_caps_the_size_and_names_the_flag(tmp_path: Path) -> None:
    from swv.core.io import read_capped, read_regular

    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 100)
    assert read_regular(path, "thing", 100) == b"x" * 100
    with pytest.raises(InputError, match=r"over the limit of 99 bytes .*raise --max-x"):
        read_regular(path, "thing", 99, "--max-x")
    with pytest.raises(InputError, match="over the limit of 10 bytes"):
        read_capped(io.BytesIO(b"y" * 1000), "<pipe>", "thing", 10)


def test_audio_and_manifest_readers_refuse_special_files(tmp_path: Path, fifo: Path) -> None:
    from swv.core.audio import audio_duration, read_audio
    from swv.data.manifest import read_manifest

    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(InputError, match="expected a regular file"):
            read_audio(path)
        with pytest.raises(InputError, match="expected a regular file"):
            audio_duration(path)
        with pytest.raises(InputError, match="manifest is a"):
            list(read_manifest(path))


def test_shard_drops_device_and_fifo_audio(cli, tmp_path: Path, fifo: Path, clip: Path) -> None:
    from swv.data.shards import read_shard

    manifest = tmp_path / "m.jsonl"
    rows = [{"audio": "/dev/zero", "text": "a"}, {"audio": str(fifo), "text": "b"}, {"audio": str(clip), "text": "c"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = cli(["data", "shard", manifest, "--out", tmp_path / "shards"])
    assert code == 0, err
    assert "character device" in out + err and "named pipe" in out + err
    clips = list(read_shard(tmp_path / "shards" / "shard-000000.tar"))
    assert [record["text"] for _, record, _ in clips] == ["c"]


def test_shard_max_audio_bytes_flag(cli, tmp_path: Path, clip: Path, one_error) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(clip), "text": "c"}) + "\n")
    line = one_error(*cli(["data", "shard", manifest, "--out", tmp_path / "s", "--max-audio-bytes", 100])[::2])
    assert "no records to shard (1 dropped, e.g. m.jsonl:1: " in line and "over the limit of 100 bytes" in line
    code, _, err = cli(["data", "shard", manifest, "--out", tmp_path / "s2", "--max-audio-bytes", 10**6])
    assert code == 0, err


def test_infer_stdin_device_and_oversized_pipe(cli, monkeypatch, bundled_model: Path, tmp_path: Path, one_error) -> None:
    with open("/dev/zero", "rb") as zero:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(zero))
        line = one_error(*cli(["infer", bundled_model, "-"])[::2])
    assert "<stdin>: audio on stdin is a character device" in line
    read_end, write_end = os.pipe()
    os.write(write_end, b"R" * 100)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(pipe))
        line = one_error(*cli(["infer", bundled_model, "-", "--max-audio-bytes", 50])[::2])
    assert "over the limit of 50 bytes" in line and "--max-audio-bytes" in line


@pytest.mark.parametrize("case", ["device", "fifo", "directory", "too big", "deep", "surrogate", "latin-1"])
def test_chat_file_refusals_are_one_line(cli, tmp_path: Path, fifo: Path, case: str, one_error) -> None:
    chat = tmp_path / "chat.json"
    args = []
    if case == "device":
        chat = Path("/dev/zero")
    elif case == "fifo":
        chat = fifo
    elif case == "directory":
        chat = tmp_path
    elif case == "too big":
        chat.write_text(json.dumps([{"role": "user", "content": "x" * 1000}]))
        args = ["--max-chat-bytes", 100]
    elif case == "deep":
        chat.write_text("[" * 100_000 + "]" * 100_000)
    elif case == "surrogate":
        chat.write_text('[{"role": "user", "content": "\\ud800"}]')
    else:
        chat.write_bytes(b'[{"role": "user", "content": "caf\xe9"}]')
    expected = {"device": "character device", "fifo": "named pipe", "directory": "is a directory",
                "too big": "over the limit of 100 bytes", "deep": "nested more than", "surrogate": "lone surrogate",
                "latin-1": "not UTF-8"}[case]
    model = tmp_path / "model"  # never loaded: the conversation is read first
    model.mkdir()
    line = one_error(*cli(["infer", model, "--chat", chat, *args])[::2])
    assert expected in line and str(chat) in line


def test_chat_depth_check_ignores_brackets_in_strings(tmp_path: Path) -> None:
    from swv.infer.chat import MAX_CHAT_DEPTH, load_conversation

    chat = tmp_path / "chat.json"
    text = "[{" * (MAX_CHAT_DEPTH + 10) + '\\" ]'
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": text}]}))
    assert load_conversation(chat)[0]["content"] == text


def test_chat_file_symlink_stays_a_symlink(cli, bundled_model: Path, clip: Path, tmp_path: Path) -> None:
    real = tmp_path / "store" / "chat.json"
    real.parent.mkdir()
    real.write_text(json.dumps({"messages": []}))
    link = tmp_path / "chat.json"
    link.symlink_to(real)
    code, _, err = cli(["infer", bundled_model, clip, "--chat", link, "--max-new-tokens", 1])
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real.resolve()
    messages = json.loads(real.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


# -- 2. tar shards -------------------------------------------------------------------------------
def _shard(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def test_sparse_member_claiming_gigabytes_is_refused_without_allocating(tmp_path: Path) -> None:
    from swv.data.shards import read_shard

    info = tarfile.TarInfo("00000000.wav")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "00000000.wav",
                        "GNU.sparse.realsize": str(3 << 30)}
    shard = _shard(tmp_path / "s.tar", [(info, b"1\n0\n0\n".ljust(512, b"\0"))])
    assert shard.stat().st_size < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="sparse file member"):
            list(read_shard(shard))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE])
def test_special_shard_members_are_refused(tmp_path: Path, kind: bytes) -> None:
    from swv.data.shards import read_shard

    info = tarfile.TarInfo("00000000.wav")
    info.type = kind
    info.linkname = "/etc/passwd"
    shard = _shard(tmp_path / "s.tar", [(info, b"")])
    with pytest.raises(InputError, match="a shard holds only regular files"):
        list(read_shard(shard))


def test_member_size_is_checked_from_the_header(tmp_path: Path) -> None:
    from swv.data.shards import read_shard

    shard = _shard(tmp_path / "s.tar", [(tarfile.TarInfo("00000000.wav"), b"x" * 1000),
                                        (tarfile.TarInfo("00000000.json"), b"{}")])
    with pytest.raises(InputError, match="member of 1,000 bytes is over the limit of 999 bytes"):
        list(read_shard(shard, max_member_bytes=999))
    assert len(list(read_shard(shard, max_member_bytes=1000))) == 1


def test_shards_source_max_member_bytes(tmp_path: Path, clip: Path) -> None:
    from swv.data.shards import write_shards
    from swv.data.sources import load_source
    from swv.recipes.schema import DatasetSpec

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(clip), "text": "c"}) + "\n")
    write_shards(manifest, tmp_path / "s", show_progress=False)
    size = clip.stat().st_size
    with pytest.raises(InputError, match=f"member of {size:,} bytes is over the limit of 1,000 bytes"):
        load_source("asr", DatasetSpec(shards=str(tmp_path / "s"), max_member_bytes=1000), cache_dir=str(tmp_path / "c"))
    rows = load_source("asr", DatasetSpec(shards=str(tmp_path / "s")), cache_dir=str(tmp_path / "c2"))
    assert len(rows) == 1


def _wav_bytes(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, noise(seconds), SR, format="WAV")
    return buf.getvalue()


def test_shard_duration_is_checked_against_the_audio_header(tmp_path: Path) -> None:
    from swv.data.shards import shard_rows

    shard = _shard(tmp_path / "s.tar", [
        (tarfile.TarInfo("00000000.wav"), _wav_bytes(1.0)),
        (tarfile.TarInfo("00000000.json"), json.dumps({"text": "a", "duration": 3600}).encode()),
        (tarfile.TarInfo("00000001.wav"), _wav_bytes(0.5)),
        (tarfile.TarInfo("00000001.json"), json.dumps({"text": "b"}).encode()),
    ])
    args = ([str(shard)], "src", "asr", "", "raise", None, [], 0)
    with pytest.raises(InputError, match=r"'duration' is 3600 but the audio header says 1\.000 s"):
        list(shard_rows(*args))
    rows = list(shard_rows(*args[:4], "skip", *args[5:]))
    assert [(r["text"], r["duration"]) for r in rows] == [("b", 0.5)]


def test_write_shards_takes_the_duration_from_the_header(tmp_path: Path, clip: Path) -> None:
    from swv.data.shards import read_shard, write_shards

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(clip), "text": "c", "duration": 3600}) + "\n")
    write_shards(manifest, tmp_path / "s", show_progress=False)
    (_, record, _), = read_shard(tmp_path / "s" / "shard-000000.tar")
    assert record["duration"] == pytest.approx(1.0)


# -- 3. corpus readers ----------------------------------------------------------------------------
def _flac(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, noise(0.2), SR, format="FLAC")


def _librispeech(root: Path, table: bytes, utts: list[str]) -> Path:
    chapter = root / "19" / "198"
    chapter.mkdir(parents=True, exist_ok=True)
    for utt in utts:
        _flac(chapter / f"{utt}.flac")
    (chapter / "19-198.trans.txt").write_bytes(table)
    return chapter / "19-198.trans.txt"


def _manifest(root: Path, fmt: str, out: Path, **opts):
    from swv.dataprep.corpora import CorpusOptions, build_corpus_manifest

    return build_corpus_manifest(root, out, fmt, CorpusOptions(**opts), show_progress=False)


def test_librispeech_bom_and_crlf_keep_the_first_utterance(tmp_path: Path) -> None:
    _librispeech(tmp_path / "ls", b"\xef\xbb\xbf19-198-0000 HELLO\r\n19-198-0001 WORLD\r\n", ["19-198-0000", "19-198-0001"])
    report = _manifest(tmp_path / "ls", "librispeech", tmp_path / "m.jsonl")
    assert [r["id"] for r in report.records] == ["19-198-0000", "19-198-0001"]
    assert [r["text"] for r in report.records] == ["HELLO", "WORLD"]


def test_commonvoice_bom_and_crlf(tmp_path: Path) -> None:
    root = tmp_path / "cv"
    _flac(root / "clips" / "a.flac")
    (root / "test.tsv").write_bytes(b"\xef\xbb\xbfclient_id\tpath\tsentence\r\nc1\ta.flac\tHello there\r\n")
    report = _manifest(root, "commonvoice", tmp_path / "m.jsonl")
    assert [(r["id"], r["text"], r["speaker"]) for r in report.records] == [("a", "Hello there", "c1")]


@pytest.mark.parametrize("fmt", ["librispeech", "commonvoice", "csv"])
def test_undecodable_bytes_are_one_line_naming_file_and_line(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "corpus"
    if fmt == "librispeech":
        table = _librispeech(root, b"19-198-0000 HELLO\n19-198-0001 CAF\xc9\n", ["19-198-0000"])
        source = root
    elif fmt == "commonvoice":
        root.mkdir()
        table = root / "test.tsv"
        table.write_bytes(b"client_id\tpath\tsentence\nc\ta.flac\tok\nc\tb.flac\tcaf\xe9\n")
        source = root
    else:
        root.mkdir()
        table = source = root / "t.csv"
        table.write_bytes(b"audio,text\na.flac,ok\nb.flac,caf\xe9\n")
    line = 3 if fmt != "librispeech" else 2
    with pytest.raises(InputError, match=rf"^{table}:{line}: not UTF-8 text"):
        _manifest(source, fmt, tmp_path / "m.jsonl")


@pytest.mark.parametrize("utt", ["../../../../x", "../../../x"])
def test_librispeech_ids_cannot_leave_the_corpus(tmp_path: Path, utt: str) -> None:
    _flac(tmp_path / "x.flac")
    _librispeech(tmp_path / "ls", f"{utt} HELLO\n".encode(), [])
    with pytest.raises(InputError, match="points outside the corpus folder"):
        _manifest(tmp_path / "ls", "librispeech", tmp_path / "m.jsonl")


def test_commonvoice_paths_and_symlinks_cannot_leave_the_clips(tmp_path: Path) -> None:
    root = tmp_path / "cv"
    _flac(tmp_path / "secret.flac")
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "link.flac").symlink_to(tmp_path / "secret.flac")
    for path in ("../../secret.flac", "link.flac"):
        (root / "test.tsv").write_text(f"client_id\tpath\tsentence\nc\t{path}\thi\n")
        with pytest.raises(InputError, match="points outside the corpus folder"):
            _manifest(root, "commonvoice", tmp_path / "m.jsonl")


def test_csv_field_over_the_limit_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("audio,text\n" + "a.flac," + "x" * 200_000 + "\n")
    with pytest.raises(InputError, match=rf"^{table}:2: malformed table row \(field larger than field limit"):
        _manifest(table, "csv", tmp_path / "m.jsonl")


@pytest.mark.parametrize("value", ["nan", "-inf", "inf", "-1"])
def test_non_finite_durations_are_refused(tmp_path: Path, value: str) -> None:
    _flac(tmp_path / "a.flac")
    table = tmp_path / "t.csv"
    table.write_text(f"audio,text,duration\na.flac,hi,{value}\n")
    with pytest.raises(InputError, match=rf"{table}:2: column 'duration' must be a finite number"):
        _manifest(table, "csv", tmp_path / "m.jsonl")


def test_written_manifests_are_strict_json(tmp_path: Path) -> None:
    from swv.data.manifest import dump_record, write_manifest

    with pytest.raises(InputError, match="field.s. duration are not finite"):
        dump_record({"id": "a", "duration": float("nan")})
    with pytest.raises(InputError):
        write_manifest(tmp_path / "m.jsonl", [{"id": "a", "duration": float("-inf")}])
    assert not (tmp_path / "m.jsonl").exists()


def test_transcript_table_encoding_and_field_limit(tmp_path: Path) -> None:
    from swv.dataprep.manifest import read_transcript_table

    table = tmp_path / "t.csv"
    table.write_bytes(b"\xef\xbb\xbfpath,text\r\na.wav,hello\r\n")
    assert read_transcript_table(table) == {"a.wav": (2, "hello")}
    table.write_bytes(b"path,text\na.wav,caf\xe9\n")
    with pytest.raises(InputError, match=rf"^{table}:2: not UTF-8 text"):
        read_transcript_table(table)
    table.write_text("path,text\na.wav," + "x" * 200_000 + "\n")
    with pytest.raises(InputError, match=rf"^{table}:2: malformed table row"):
        read_transcript_table(table)


def test_recipe_fifo_is_refused(cli, fifo: Path, one_error) -> None:
    recipe = fifo.with_suffix(".yaml")
    fifo.rename(recipe)
    line = one_error(*cli(["recipe", "validate", recipe])[::2])
    assert "recipe is a named pipe" in line


# -- 4. silent substitutions in model directories -------------------------------------------------
def test_lora_weights_without_their_config_are_an_error(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    assert (model / "adapter_model.safetensors").is_file()
    (model / "adapter_config.json").unlink()
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert "adapter_model.safetensors" in line and "no adapter_config.json" in line


@pytest.mark.parametrize("cwd_has_backbone", [False, True])
def test_missing_component_directory_is_never_substituted(cli, monkeypatch, bundled_model: Path, clip: Path,
                                                          tmp_path: Path, cwd_has_backbone: bool, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    shutil.rmtree(model / "backbone")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if cwd_has_backbone:
        shutil.copytree(bundled_model / "backbone", elsewhere / "backbone")
    monkeypatch.chdir(elsewhere)
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert "backbone.path: 'backbone' is missing from the model directory" in line
    assert "Hub" not in line.split("and is not")[0]


def test_hub_id_component_is_not_taken_from_the_current_directory(cli, monkeypatch, bundled_model: Path,
                                                                   clip: Path, tmp_path: Path, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    shutil.rmtree(model / "backbone")
    edit_config(model, lambda c: (c["backbone"].update(path="org/tiny-llama"), c.update(bundled=["encoder"])))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(bundled_model / "backbone", elsewhere / "org" / "tiny-llama")
    monkeypatch.chdir(elsewhere)
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert "backbone.path: Hub id 'org/tiny-llama' is also a path in the current directory" in line


def test_gguf_file_outside_the_model_directory_is_refused(cli, bundled_model: Path, clip: Path, tmp_path: Path,
                                                          one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    edit_config(model, lambda c: c["backbone"].update(gguf_file="../../x.gguf"))
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert "backbone.gguf_file: '../../x.gguf' resolves outside the model directory" in line


def test_weight_file_symlinked_outside_is_refused(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    weights = model / "adapters" / "alignment.safetensors"
    outside = tmp_path / "outside.safetensors"
    shutil.move(weights, outside)
    weights.symlink_to(outside)
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert f"{weights}: weight file resolves outside the model directory" in line


# -- 5. unpickling and template-sandbox refusals are one line -------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _evil_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    return path


def test_malicious_pickle_in_encoder_weights_is_one_line(tmp_path: Path) -> None:
    from swv.encoders.loading import _torch_bin

    file = _evil_pickle(tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match=rf"^{file}: unpickling refused: .*system") as info:
        _torch_bin(file)
    assert "\n" not in str(info.value)


def test_cli_maps_unpickling_and_sandbox_refusals(cli, monkeypatch, tmp_path: Path, one_error) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    file = _evil_pickle(tmp_path / "optimizer.bin")

    def unpickle(*args, **kwargs):
        torch.load(file, weights_only=True)

    def sandbox(*args, **kwargs):
        ImmutableSandboxedEnvironment().from_string("{{ ''.__class__.__mro__ }}").render()

    monkeypatch.setattr("swv.cli.main.app", unpickle)
    line = one_error(*cli(["train"])[::2])
    assert line.startswith("error: unpickling refused:") and "system" in line
    monkeypatch.setattr("swv.cli.main.app", sandbox)
    line = one_error(*cli(["train"])[::2])
    assert "refused by the template sandbox" in line and "__class__" in line
    monkeypatch.setenv("SWV_DEBUG", "1")
    with pytest.raises(Exception, match="unsafe"):
        cli(["train"])


def test_hostile_chat_template_is_one_line(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    hostile = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    edit_config(model, lambda c: c["backbone"].update(chat_template=hostile))
    for template in (model / "chat_template.jinja", model / "backbone" / "chat_template.jinja"):
        template.write_text(hostile)
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert "chat template: refused by the template sandbox" in line
