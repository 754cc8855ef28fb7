"""Property-based fuzzing (hypothesis) of the file formats swv reads, generated as real files
of each format with hostile contents rather than random bytes: LibriSpeech transcript tables,
CommonVoice and generic TSV/CSV tables (odd encodings, byte-order marks, CRLF, huge fields,
non-finite durations), tar shards (valid tar structure, hostile member names, types, sizes and
headers), conversation files (deep nesting, lone surrogates, wrong types) and model
directories (a tiny export, built once, whose ``swv_config.json`` gets hostile values).

The property, for every input: it loads, or it raises one of swv's own errors
(:class:`swv.core.errors.SwvError`) with a one-line message; never another exception, never a
hang (a hypothesis deadline per example, and a watchdog alarm), never unbounded memory (the
address space is capped a little above its size before each call: an allocation past the cap
must surface as an swv error, not kill the machine).

Profiles (tests/conftest.py): ``ci`` by default (derandomized, this module in well under a
minute), ``SWV_FUZZ_PROFILE=long`` for a nightly run (random, 6x the examples)::

    SWV_FUZZ_PROFILE=long .venv/bin/pytest -q tests/test_fuzz.py tests/test_fuzz_formats.py
"""

from __future__ import annotations

import functools
import io
import json
import os
import resource
import shutil
import signal
import string
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from swv.core.errors import SwvError  # noqa: E402

SCALE = int(os.environ["SWV_FUZZ_SCALE"])  # see _fuzz_profiles in tests/conftest.py
#: Seconds before the watchdog declares a call hung.
WATCHDOG_SECONDS = 60
#: Address space a call may add (bytes) before its allocations fail.
MEMORY_HEADROOM = 2 << 30


def budget(examples: int, deadline: float = 10.0) -> settings:
    """``examples`` per test (times ``SWV_FUZZ_SCALE``), each within ``deadline`` seconds."""
    return settings(max_examples=examples * SCALE, deadline=timedelta(seconds=deadline))


class Hung(BaseException):
    """Raised by the watchdog (a BaseException: ``except Exception`` in swv cannot swallow it)."""


def _address_space() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))


@contextmanager
def bounded() -> Iterator[None]:
    """A watchdog alarm and an address-space cap of ``MEMORY_HEADROOM`` above the current size."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)

    def hung(signum: int, frame: Any) -> None:
        raise Hung(f"no answer within {WATCHDOG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, hung)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.alarm(WATCHDOG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous)


def loads_or_refuses(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or None when it raised an :class:`SwvError` with a one-line message."""
    with bounded():
        try:
            return call()
        except SwvError as exc:
            message = str(exc).strip()
            assert message and "\n" not in message, repr(message)
            return None


# -- text: the hostile pieces every format is made of ----------------------------------------------
CHARS = st.characters(categories=["L", "N", "P", "S", "Zs", "Cc", "Cs", "Cf"])
HUGE = st.integers(1, 300_000).map(lambda n: "x" * n)  # past csv's 131072-character field limit
FIELD = st.one_of(st.text(CHARS, max_size=30), HUGE, st.sampled_from(["", " ", "\t", '"', "'", "\x00", "\ufeff",
                                                                       "nan", "inf", "-inf", "1e999", "-1", "0x10"]))
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"])
NEWLINES = st.sampled_from(["\n", "\r\n", "\r"])


def encode(text: str, encoding: str) -> bytes:
    """``text`` in ``encoding``; lone surrogates kept where the codec can carry them."""
    errors = "surrogatepass" if encoding.startswith("utf") else "replace"
    return text.encode(encoding, errors=errors)


@functools.cache
def flac() -> bytes:
    """A short real FLAC file's bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(0).uniform(-0.1, 0.1, 4000).astype(np.float32), 16000, format="FLAC")
    return buf.getvalue()


def _fresh(path: Path) -> Path:
    """An empty directory at ``path`` (hypothesis reuses a test's tmp_path across examples)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- corpus readers ------------------------------------------------------------------------------
UTTERANCE = st.one_of(st.just("19-198-0001"), st.just("19-198-0002"), st.sampled_from(
    ["../../../etc/passwd", "/etc/passwd", "19-198-0001/..", "..", ".", "-", "a\x00b"]), st.text(CHARS, max_size=12))
TRANS_LINE = st.one_of(st.tuples(UTTERANCE, FIELD).map(" ".join), FIELD)


def _build_manifest(root: Path, fmt: str, **options: Any) -> Any:
    from swv.dataprep.corpora import build_corpus_manifest
    from swv.dataprep.corpora.base import CorpusOptions

    return loads_or_refuses(lambda: build_corpus_manifest(root, root / "out.jsonl", fmt, CorpusOptions(**options),
                                                          show_progress=False))


@budget(150)
@given(lines=st.lists(TRANS_LINE, max_size=6), encoding=ENCODINGS, newline=NEWLINES)
def test_librispeech_transcripts(tmp_path: Path, lines: list[str], encoding: str, newline: str) -> None:
    root = _fresh(tmp_path / "ls")
    chapter = root / "test-clean" / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_bytes(encode(newline.join(lines), encoding))
    (chapter / "19-198-0001.flac").write_bytes(flac())
    (chapter / "19-198-0002.flac").write_bytes(flac()[:40])
    _build_manifest(root, "librispeech", split="test-clean")


CV_COLUMNS = st.lists(st.sampled_from(["client_id", "path", "sentence", "up_votes", "age", "gender", "locale",
                                       "duration", "audio", "text"]), min_size=1, max_size=6, unique=True)
TABLE_VALUE = st.one_of(FIELD, st.sampled_from(["a.flac", "short.flac", "missing.flac", "../a.flac", "/etc/passwd"]))


@budget(200)
@given(columns=CV_COLUMNS, rows=st.lists(st.lists(TABLE_VALUE, min_size=0, max_size=7), max_size=4),
       fmt=st.sampled_from(["commonvoice", "tsv", "csv"]), encoding=ENCODINGS, newline=NEWLINES)
def test_corpus_tables(tmp_path: Path, columns: list[str], rows: list[list[str]], fmt: str,
                       encoding: str, newline: str) -> None:
    root = _fresh(tmp_path / "cv")
    (root / "clips").mkdir()
    for folder in (root, root / "clips"):
        (folder / "a.flac").write_bytes(flac())
        (folder / "short.flac").write_bytes(flac()[:40])
    separator = "," if fmt == "csv" else "\t"
    text = newline.join(separator.join(row) for row in [columns, *rows])
    table = root / ("test.tsv" if fmt == "commonvoice" else f"table.{fmt}")
    table.write_bytes(encode(text, encoding))
    _build_manifest(root if fmt == "commonvoice" else table, fmt)


# -- tar shards ------------------------------------------------------------------------------------
MEMBER_NAME = st.one_of(
    st.sampled_from(["00000000.json", "00000000.flac", "00000001.json", "00000001.wav", "noext", ".json", "a.b.json",
                     "../escape.json", "/abs/00000002.json", "dir/00000003.json", "x" * 300 + ".json"]),
    st.text(CHARS, min_size=1, max_size=20).map(lambda s: s.replace("\x00", "") or "n"),
)
MEMBER_TYPE = st.sampled_from([tarfile.REGTYPE] * 4 + [tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                                        tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.GNUTYPE_SPARSE])
PAX = st.dictionaries(st.sampled_from(["size", "path", "mtime", "uid", "linkpath", "comment"]),
                      st.one_of(FIELD, st.sampled_from(["99999999999999999", "-5", "1e3"])), max_size=2)


def _payload(kind: str, record: Any) -> bytes:
    if kind == "record":
        return json.dumps(record, allow_nan=True).encode("utf-8", errors="surrogatepass")
    return {"flac": flac(), "short": flac()[:50], "empty": b"", "junk": b"\xff\xfe" * 20}[kind]


RECORD = st.dictionaries(st.sampled_from(["text", "duration", "task", "id", "audio", "instruction", "response", "tags"]),
                         st.one_of(FIELD, st.floats(allow_nan=True), st.integers(-2, 2**70), st.lists(st.none()),
                                   st.none()), max_size=4)
MEMBER = st.tuples(MEMBER_NAME, MEMBER_TYPE, st.sampled_from(["record", "flac", "short", "empty", "junk"]), RECORD, PAX)


def _shard(members: list[tuple], tar_format: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tar_format) as tar:
        for name, kind, payload_kind, record, pax in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            payload = _payload(payload_kind, record) if kind == tarfile.REGTYPE else b""
            info.size = len(payload)
            info.linkname = "00000000.json" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.pax_headers = {k: v.replace("\x00", "") for k, v in pax.items()} if tar_format == tarfile.PAX_FORMAT else {}
            try:
                tar.addfile(info, io.BytesIO(payload))
            except (ValueError, UnicodeError):  # a header this format cannot hold: leave the member out
                continue
    return buf.getvalue()


def _patch_size(blob: bytes, value: bytes) -> bytes:
    """The first header's size field set to ``value`` (and its checksum recomputed): a valid
    header whose size lies."""
    if len(blob) < 512:
        return blob
    header = bytearray(blob[:512])
    header[124:136] = value.ljust(12, b"\0")[:12]
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + blob[512:]


@budget(250)
@given(members=st.lists(MEMBER, max_size=5), tar_format=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                                                          tarfile.PAX_FORMAT]),
       size=st.one_of(st.none(), st.sampled_from([b"77777777777", b"00000000000", b"-1", b"\x80" + b"\xff" * 11, b"zz"])),
       cut=st.one_of(st.none(), st.integers(0, 4096)), on_error=st.sampled_from(["error", "skip"]))
def test_tar_shards(tmp_path: Path, members: list[tuple], tar_format: int, size: bytes | None,
                    cut: int | None, on_error: str) -> None:
    from swv.data.shards import shard_rows

    blob = _shard(members, tar_format)
    if size is not None:
        blob = _patch_size(blob, size)
    shard = _fresh(tmp_path / "shards") / "shard-000000.tar"
    shard.write_bytes(blob if cut is None else blob[:cut])
    loads_or_refuses(lambda: list(shard_rows([str(shard)], "s", "asr", "", on_error, None, [], 0, 1 << 20)))


# -- conversation files ------------------------------------------------------------------------------
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "audio", "input_audio", "image_url", 3, None])},
                             optional={"text": st.one_of(FIELD, st.integers()), "path": TABLE_VALUE,
                                       "input_audio": st.one_of(st.fixed_dictionaries(
                                           {"data": st.sampled_from(["", "AAAA", "!!", "UklGRg=="])},
                                           optional={"format": st.sampled_from(["wav", "flac", "mp3", 7])}), FIELD)})
MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system", "tool", "", 1]),
                                              "content": st.one_of(FIELD, st.lists(PART, max_size=3), st.none(),
                                                                   st.integers(), st.dictionaries(FIELD, FIELD,
                                                                                                  max_size=2))})
NESTED = st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n)


def _chat_text(messages: Any, wrap: bool, nested: str | None, escape: str | None) -> str:
    text = json.dumps({"messages": messages} if wrap else messages, ensure_ascii=escape is not None)
    if nested is not None:
        text = text.replace('"role"', f'"nest": {nested}, "role"', 1) if '"role"' in text else nested
    if escape is not None:
        text = text.replace('"user"', f'"{escape}"', 1)
    return text


@budget(200)
@given(messages=st.one_of(st.lists(MESSAGE, max_size=3), FIELD, st.none(), st.integers()), wrap=st.booleans(),
       nested=st.one_of(st.none(), NESTED), escape=st.one_of(st.none(), st.sampled_from(["\\ud800", "\\udfff\\ud800",
                                                                                         "\\u0000", "\\ud83d\\ude00"])),
       encoding=ENCODINGS)
def test_conversation_files(tmp_path: Path, messages: Any, wrap: bool, nested: str | None,
                            escape: str | None, encoding: str) -> None:
    from swv.infer.chat import load_conversation, parse_messages

    folder = _fresh(tmp_path / "chat")
    (folder / "a.flac").write_bytes(flac())
    (folder / "short.flac").write_bytes(flac()[:40])
    path = folder / "chat.json"
    path.write_bytes(encode(_chat_text(messages, wrap, nested, escape), encoding))
    loaded = loads_or_refuses(lambda: load_conversation(path))
    if loaded is not None:
        loads_or_refuses(lambda: parse_messages(loaded, "<audio_patch>", base_dir=folder))


# -- model directories -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fuzz_export(save_tiny_model) -> Path:
    """A tiny exported model (bundled: the directory holds everything it loads), built once."""
    return save_tiny_model("fuzz-export", bundle=True)


def _json_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.extend(_json_paths(value, (*prefix, key)))
    return out


HOSTILE = st.one_of(st.sampled_from([0, -1, 2**31, 2**63, 10**12, 1e308, float("nan"), float("inf"), -float("inf"),
                                     True, None, "", "../../..", "/etc/passwd", "\ud800", [], {}, [[[[]]]],
                                     "x" * 100_000, 3.5, "float16", "meta"]),
                    st.integers(-10, 10**7), st.text(CHARS, max_size=10))


@budget(60, deadline=30.0)
@given(data=st.data())
def test_model_config_values(fuzz_export: Path, tmp_path: Path, data: st.DataObject) -> None:
    from swv.core.config import CONFIG_NAME
    from swv.model.speechlm import SpeechLM

    model = tmp_path / "model"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(fuzz_export, model)
    config = json.loads((model / CONFIG_NAME).read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_json_paths(config)))
        node = config
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = data.draw(HOSTILE)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the path
    (model / CONFIG_NAME).write_text(json.dumps(config, allow_nan=True, ensure_ascii=False), errors="surrogatepass")
    loads_or_refuses(lambda: SpeechLM.from_pretrained(model))


@pytest.mark.parametrize("value", ["x" * 100_000, "a\x00b"])
@pytest.mark.parametrize("field", ["path", "tokenizer"])
def test_component_paths_no_file_can_have(fuzz_export: Path, tmp_path: Path, field: str, value: str) -> None:
    """Found by test_model_config_values: a component path longer than a file name was an
    OSError (ENAMETOOLONG) from the model directory's path checks."""
    from swv.core.config import CONFIG_NAME
    from swv.core.errors import InputError
    from swv.model.speechlm import SpeechLM

    model = tmp_path / "model"
    shutil.copytree(fuzz_export, model)
    config = json.loads((model / CONFIG_NAME).read_text())
    config["backbone"][field] = value
    (model / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(InputError) as caught:
        SpeechLM.from_pretrained(model)
    assert "\n" not in str(caught.value) and "backbone" in str(caught.value)
