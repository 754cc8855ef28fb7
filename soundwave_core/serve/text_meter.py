"""A chat body's text measured while it arrives: :class:`TextMeter`.

:func:`~swv.serve.openai_api.parse_json` refuses a body with more bytes of strings besides audio
data than ``--max-text-chars`` can take, but only once the body is read whole: a client sending
30 MB of text made the server read all of it in the event loop and scan it in a worker thread
before the 400 (measured with ``benchmarks/serve_bounds.py``: 4.4-5.5x a normal request's idle
latency, from the GIL those threads held). :class:`TextMeter` counts the same bytes on the part
of the body read so far, as it arrives, so the reader (:func:`~swv.serve.body.read_body`) can
refuse such a body after about the limit's worth of it.

What it counts is a lower bound of :func:`~swv.serve.openai_api.string_bytes` of the whole body
(so it never refuses a body the whole-body check would take): the bytes of every string that is
not the value of a ``"data"`` key (the audio), escapes counted whole, and of a string still open
at the end of the part read, unless it may be audio. It resumes where the last call stopped,
so each byte is scanned about once (a string open across calls resumes at a point where no
escape is pending). It measures the first :data:`MAX_METERED_STRINGS` strings only: past them it
stops counting (it never refuses wrongly; the whole-body checks decide), which bounds its Python
work per body whatever the body holds (a body of a million empty strings is refused by
``--max-json-structure-bytes`` once read).
Why our own: the standard library's and the usual streaming JSON parsers (ijson) build each
string they meet, the megabytes of audio included; this only skips over them.
"""

from __future__ import annotations

import re

__all__ = ["AUDIO_KEY", "MAX_METERED_STRINGS", "TextMeter"]

#: Strings a meter counts before it stops (a chat body holds a few per message).
MAX_METERED_STRINGS = 10_000
#: The key whose string values are audio (``input_audio.data``), not text.
AUDIO_KEY = b"data"
_QUOTE = re.compile(rb'"')
#: A string's content from a point where no escape is pending, up to (not including) its closing
#: quote or a lone backslash at the end of the bytes read (possessive: no backtracking).
_CONTENT = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
#: What follows a closing quote: whitespace, then the byte that tells a key (``:``) from a value.
_NEXT = re.compile(rb"[ \t\r\n]*+[^ \t\r\n]")


class TextMeter:
    """Bytes of strings besides audio data in the bytes of a JSON body read so far (see the
    module): :meth:`measure` each time more has arrived."""

    def __init__(self, max_strings: int = MAX_METERED_STRINGS) -> None:
        self.max_strings = max_strings
        self.counted = 0  # the strings closed before `pos`
        self.strings = 0
        self.pos = 0  # outside any string: where the next one is looked for
        self.start = -1  # the open string's first byte (after its quote); -1: none open
        self.resume = 0  # where scanning the open string goes on
        self.key = b""  # the last key (only when short enough to be the audio key)

    def measure(self, data: bytes | memoryview) -> int:
        """The bytes counted in ``data``, the body's bytes so far (each call's ``data`` extends
        the previous one's)."""
        while self.strings < self.max_strings:
            if self.start < 0:
                found = _QUOTE.search(data, self.pos)
                if found is None:
                    self.pos = len(data)
                    return self.counted
                self.start = self.resume = found.end()
            stop = _CONTENT.match(data, self.resume).end()
            after = _NEXT.match(data, stop + 1) if stop < len(data) and data[stop] == 0x22 else None
            if after is None:  # still open, or closed without the byte that says whether it is a key
                self.resume = stop
                return self.counted + (0 if self.key == AUDIO_KEY else stop - self.start)
            self._close(data, stop, is_key=data[after.end() - 1] == 0x3A)
        return self.counted

    def _close(self, data: bytes | memoryview, stop: int, is_key: bool) -> None:
        """Count the string closed at ``stop`` (unless it is audio) and look for the next."""
        length = stop - self.start
        if is_key:
            self.key = bytes(data[self.start : stop]) if length <= len(AUDIO_KEY) else b""
        if is_key or self.key != AUDIO_KEY:
            self.counted += length
        self.strings += 1
        self.pos, self.start = stop + 1, -1
