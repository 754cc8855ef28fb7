"""OpenAI-style chat messages -> a rendered conversation and its audio clips, in order.

A conversation is a list of ``{"role", "content"}`` messages. Roles: ``system`` (or
``developer``; first message only), ``user``, ``assistant``; the last message is a user turn.
``content`` is a string or a list of parts:

* ``{"type": "text", "text": "..."}``;
* ``{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav" | "mp3" | "flac"}}``
  (the OpenAI form; the bytes are decoded with soundfile);
* ``{"type": "audio", "path": "clip.wav"}`` or ``{"type": "audio", "audio": <bytes | 1-D float
  array>, "sample_rate": 16000}`` (local forms for the Python API and ``swv infer --chat``;
  refused with ``local_audio=False``, as the server does: a client may not name server files).

Audio parts may appear only in user turns, any number of them, anywhere among the text. Each
user turn is rendered as its parts joined by newlines, an audio part becoming the model's
audio placeholder token, so ``[audio, "Transcribe the speech."]`` renders exactly like a
one-turn :class:`~swv.infer.pipeline.Pipeline` request. Errors name the offending part as
``messages[i].content[j]...``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swv.core.audio import AudioInfo, audio_info, check_info
from swv.core.errors import InputError

#: Audio formats accepted in ``input_audio`` parts.
INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac")
_SYSTEM_ROLES = ("system", "developer")
#: Largest conversation file ``swv infer --chat`` reads (bytes; ``--max-chat-bytes``).
DEFAULT_MAX_CHAT_BYTES = 64 << 20
#: Deepest nesting of arrays and objects a conversation file may have.
MAX_CHAT_DEPTH = 64
#: A JSON string (skipped) or a bracket (counted) when measuring a conversation file's nesting.
_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


@dataclass(frozen=True)
class AudioPart:
    """One audio part before decoding: ``source`` is a path, file bytes or an array (with
    ``sample_rate``); ``where`` names it for messages."""

    source: Any
    sample_rate: int | None
    where: str


@dataclass(frozen=True)
class ParsedConversation:
    """Text messages (user turns hold ``audio_token`` at each clip's place) and the audio
    parts in the order of their placeholders."""

    messages: list[dict[str, str]]
    audio: list[AudioPart]


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one conversation (``None``: no limit), all checked by :meth:`check` before its
    text is tokenized or any clip decoded: ``max_text_chars`` characters of text over all
    messages, ``max_clips`` audio parts, ``max_total_seconds`` of audio over all clips and
    ``max_channels`` per clip (both from the clips' headers)."""

    max_text_chars: int | None = None
    max_clips: int | None = None
    max_total_seconds: float | None = None
    max_channels: int | None = None

    def check(self, parsed: ParsedConversation, audio_token: str, max_duration: float | None = None) -> int:
        """Refuse a conversation over a limit; every clip's header is checked against
        ``max_duration`` (seconds per clip) and :attr:`max_channels` on the way. Returns the
        samples decoding the clips will produce (frames x channels summed over the clips, from
        their headers; an array clip, already decoded, counts none): the cost of decoding."""
        chars = sum(len(m["content"]) for m in parsed.messages) - len(parsed.audio) * len(audio_token)
        if self.max_text_chars is not None and chars > self.max_text_chars:
            raise InputError(f"messages: {chars} characters of text exceed the limit of {self.max_text_chars} per request")
        if self.max_clips is not None and len(parsed.audio) > self.max_clips:
            raise InputError(f"messages: {len(parsed.audio)} audio clips exceed the limit of {self.max_clips} per request")
        total = 0.0
        samples = 0
        for part in parsed.audio:
            info = _header(part)
            if info is None:
                continue
            check_info(info, part.where, max_duration, self.max_channels)
            total += info.seconds
            samples += info.samples
        if self.max_total_seconds is not None and total > self.max_total_seconds:
            raise InputError(
                f"messages: {total:.2f} s of audio in {len(parsed.audio)} clips exceed the limit of "
                f"{self.max_total_seconds:g} s per request"
            )
        return samples


def _header(part: AudioPart) -> AudioInfo | None:
    """A clip's header (a file or encoded bytes), without decoding; ``None`` for an array."""
    if isinstance(part.source, (bytes, bytearray, str, os.PathLike)):
        return audio_info(bytes(part.source) if isinstance(part.source, bytearray) else part.source, part.where)
    return None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _input_audio(part: dict[str, Any], where: str) -> AudioPart:
    payload = part.get("input_audio")
    if not isinstance(payload, dict):
        raise InputError(f"{where}.input_audio: expected an object with 'data' and 'format'")
    fmt = payload.get("format")
    if fmt not in INPUT_AUDIO_FORMATS:
        raise InputError(f"{where}.input_audio.format: expected one of {', '.join(INPUT_AUDIO_FORMATS)}, got {fmt!r}")
    data = payload.get("data")
    if not isinstance(data, str) or not data:
        raise InputError(f"{where}.input_audio.data: expected base64-encoded {fmt} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}.input_audio.data: not valid base64") from None
    return AudioPart(raw, None, f"{where}.input_audio")


def _local_audio(part: dict[str, Any], where: str, base_dir: Path | None) -> AudioPart:
    if "path" in part:
        path = Path(_text(part["path"], f"{where}.path"))
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return AudioPart(path, None, os.fspath(path))
    if "audio" not in part:
        raise InputError(f"{where}: an 'audio' part needs 'path' or 'audio'")
    rate = part.get("sample_rate")
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0):
        raise InputError(f"{where}.sample_rate: expected a positive integer, got {rate!r}")
    return AudioPart(part["audio"], rate, where)


def _user_content(
    content: Any, where: str, audio_token: str, base_dir: Path | None, local_audio: bool
) -> tuple[str, list[AudioPart]]:
    if isinstance(content, str):
        return checked_text(content, where, audio_token), []
    if not isinstance(content, list) or not content:
        raise InputError(f"{where}: expected a string or a non-empty list of content parts")
    pieces: list[str] = []
    audio: list[AudioPart] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise InputError(f"{at}: expected a content part object, got {type(part).__name__}")
        kind = part.get("type")
        if kind == "text":
            pieces.append(checked_text(_text(part.get("text"), f"{at}.text"), f"{at}.text", audio_token))
        elif kind == "input_audio":
            audio.append(_input_audio(part, at))
            pieces.append(audio_token)
        elif kind == "audio" and local_audio:
            audio.append(_local_audio(part, at, base_dir))
            pieces.append(audio_token)
        else:
            kinds = "'text', 'input_audio' or 'audio'" if local_audio else "'text' or 'input_audio'"
            raise InputError(f"{at}.type: expected {kinds}, got {kind!r}")
    return "\n".join(pieces), audio


def checked_text(text: str, where: str, audio_token: str) -> str:
    """``text`` if it is valid Unicode without the audio placeholder (:class:`InputError` naming
    ``where`` otherwise)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{where}: not valid Unicode (a lone surrogate at character {exc.start})") from None
    if audio_token in text:
        raise InputError(f"{where}: text may not contain the audio placeholder {audio_token!r}; send audio as an audio part")
    return text


def _plain_content(content: Any, where: str, audio_token: str) -> str:
    """System and assistant content: a string or text parts only."""
    if isinstance(content, str):
        return checked_text(content, where, audio_token)
    if not isinstance(content, list):
        raise InputError(f"{where}: expected a string or a list of text parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise InputError(f"{where}[{j}]: only text parts are allowed here")
        texts.append(checked_text(_text(part.get("text"), f"{where}[{j}].text"), f"{where}[{j}].text", audio_token))
    return "\n".join(texts)


def parse_messages(
    messages: Any, audio_token: str, base_dir: Path | None = None, *, local_audio: bool = True
) -> ParsedConversation:
    """Check OpenAI-style ``messages`` and render them to text messages plus audio parts.

    ``base_dir`` resolves relative ``path`` audio parts (a conversation file's directory);
    ``local_audio=False`` accepts ``input_audio`` parts only.
    """
    if not isinstance(messages, list) or not messages:
        raise InputError("messages: expected a non-empty list of messages")
    out: list[dict[str, str]] = []
    audio: list[AudioPart] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InputError(f"{where}: expected an object with 'role' and 'content'")
        role = message.get("role")
        if "content" not in message:
            raise InputError(f"{where}.content: missing")
        content = message["content"]
        if role in _SYSTEM_ROLES:
            if i != 0:
                raise InputError(f"{where}: a {role} message may only come first")
            out.append({"role": "system", "content": _plain_content(content, f"{where}.content", audio_token)})
        elif role == "assistant":
            out.append({"role": "assistant", "content": _plain_content(content, f"{where}.content", audio_token)})
        elif role == "user":
            text, clips = _user_content(content, f"{where}.content", audio_token, base_dir, local_audio)
            out.append({"role": "user", "content": text})
            audio.extend(clips)
        else:
            raise InputError(f"{where}.role: expected 'system', 'user' or 'assistant', got {role!r}")
    if out[-1]["role"] != "user":
        raise InputError(f"messages[{len(messages) - 1}]: the last message must be a user turn")
    return ParsedConversation(out, audio)


def load_conversation(path: Path, max_bytes: int = DEFAULT_MAX_CHAT_BYTES) -> list[dict[str, Any]]:
    """Messages from a conversation JSON file: a list of messages or ``{"messages": [...]}``.
    The file must be a regular file of at most ``max_bytes`` (``--max-chat-bytes``), UTF-8, JSON
    nested at most :data:`MAX_CHAT_DEPTH` deep and free of lone surrogates."""
    import json

    from swv.core.io import read_regular

    raw = read_regular(path, "conversation file", max_bytes, "--max-chat-bytes")
    try:
        text = raw.decode("utf-8")
        _check_depth(text, path)
        data = json.loads(text)
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except UnicodeEncodeError as exc:
        raise InputError(f"{path}: a string holds a lone surrogate ({exc.reason}); it cannot be UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise InputError(f"{path}: expected a list of messages or an object with 'messages'")
    return messages


def _check_depth(text: str, path: Path) -> None:
    """Refuse JSON whose arrays/objects nest deeper than :data:`MAX_CHAT_DEPTH` (the parser
    would recurse past Python's limit), before parsing it; brackets inside strings do not count."""
    depth = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        depth += 1 if token in "[{" else -1
        if depth > MAX_CHAT_DEPTH:
            raise InputError(f"{path}: JSON nested more than {MAX_CHAT_DEPTH} levels deep")


def user_turn(audio_paths: Sequence[str], prompt: str | None) -> dict[str, Any]:
    """A user message with ``audio`` path parts followed by the ``prompt`` text (if any)."""
    parts: list[dict[str, Any]] = [{"type": "audio", "path": path} for path in audio_paths]
    if prompt:
        parts.append({"type": "text", "text": prompt})
    return {"role": "user", "content": parts}

