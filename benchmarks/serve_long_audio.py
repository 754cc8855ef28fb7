"""Long clips through ``swv serve``: server memory and latency against clip length.

``long_audio.py`` measures what a clip costs through ``swv infer``; this script measures the
same through the real server. One run builds the ``tiny`` recipe's model (random init, no
downloads; ``long_audio.build_model``), then for each clip length (noise, 1, 2, 4 and 10 minutes
by default; ``long_audio.write_clip``) and each endpoint (``POST /v1/chat/completions`` with the
clip as an ``input_audio`` part, and ``POST /v1/audio/transcriptions`` with it as a multipart
upload) starts a fresh ``swv serve`` (``python -m swv.cli serve``, uvicorn on 127.0.0.1, through
``serve_bounds.start_server``), warms it up with a 1 s clip on the same endpoint, and sends the
long clip once, alone. Per request:

* ``peak growth MB``: the server process's peak resident memory during the request above its
  resident memory just before it (VmHWM of ``/proc/PID/status``, reset through
  ``/proc/PID/clear_refs`` before the request; where the kernel refuses the reset, the sampled
  peak below);
* ``sampled growth MB``: the same from VmRSS sampled every 10 ms (``serve_bounds.PeakRss``);
* ``latency s``: the client's wall time of the request (upload, base64 and audio decoding,
  encoder, adapters, prefill and ``--max-tokens`` new tokens);
* ``prompt tok``: prompt tokens the chat answer reports (text + audio embeddings; the
  transcription answer reports none);
* ratios against the shortest length of the same run and endpoint, and ``MB/min``: the growth
  added per minute of audio since the previous length. Memory grows linearly when that slope
  stays flat; the last line says whether it does (last slope within ``--flat-factor`` of the
  first).

The server's limits are raised by flags so the longest clip is accepted: ``--max-audio-seconds``
and ``--max-request-audio-seconds`` (the longest clip + 1 s), ``--max-body-bytes`` and
``--body-buffer-bytes`` (the largest body + 1 MiB, at least the defaults), ``--max-context`` (one
token per Whisper encoder frame, 50 per second, + 4096) and ``--max-tokens``; the output names
them. A fresh server per request, so memory freed by an earlier request and kept by the
allocator does not hide a later one's growth. A random CTC head keeps almost every frame, so the
LLM sees ~17 audio tokens per second: the worst case (see ``long_audio.py``).

    .venv/bin/python benchmarks/serve_long_audio.py             # 1, 2, 4, 10 min, both endpoints; ~70 s on 2 shared cores
    .venv/bin/python benchmarks/serve_long_audio.py --quick     # 0.5, 1, 2 min, chat only; ~30 s
    .venv/bin/python benchmarks/serve_long_audio.py --minutes 1 5 --endpoint transcriptions
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_audio import build_model, write_clip  # noqa: E402
from serve_bounds import MB, MODEL_ID, PeakRss, chat_body, rss_bytes, start_server, stop_server  # noqa: E402

from swv.serve import limits  # noqa: E402

#: Whisper's encoder frames per second of audio: no adapter chain gives the LLM more tokens.
ENCODER_FRAMES_PER_SECOND = 50
#: Tokens of ``--max-context`` besides the audio's (template, instruction, answer).
CONTEXT_MARGIN = 4096
#: The warm-up request's clip (1 s), sent twice to each fresh server before the measured one.
WARM_UP_MINUTES = 1 / 60
BOUNDARY = "swvbenchboundary"
ENDPOINTS = {"chat": "/v1/chat/completions", "transcriptions": "/v1/audio/transcriptions"}


@dataclass
class Row:
    """One request's figures (MB and seconds)."""

    minutes: float
    endpoint: str
    peak_mb: float
    sampled_mb: float
    latency: float
    prompt_tokens: int | None
    hwm_reset: bool


# -- request bodies ---------------------------------------------------------------------------------
def multipart(wav: bytes) -> bytes:
    """A ``multipart/form-data`` body with the clip as ``file`` and the served ``model``."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{MODEL_ID}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clip.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()
    return head + wav + f"\r\n--{BOUNDARY}--\r\n".encode()


def body_for(endpoint: str, wav: bytes, max_tokens: int) -> tuple[bytes, str]:
    """The request body for ``endpoint`` carrying the WAV bytes ``wav``, and its content type."""
    if endpoint == "chat":
        return chat_body([(wav, "wav")], max_tokens=max_tokens), "application/json"
    return multipart(wav), f"multipart/form-data; boundary={BOUNDARY}"


def wav_bytes(directory: Path, minutes: float) -> bytes:
    """A noise clip of ``minutes`` minutes as 16 kHz 16-bit WAV bytes (``long_audio.write_clip``)."""
    path = directory / f"{minutes:g}min.wav"
    write_clip(path, minutes * 60)
    data = path.read_bytes()
    path.unlink()
    return data


def post(port: int, endpoint: str, body: bytes, content_type: str) -> tuple[int, dict]:
    """POST ``body`` to ``endpoint``; the status and the JSON answer (``{}`` when not JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1800)
    try:
        conn.request("POST", ENDPOINTS[endpoint], body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {}


# -- server memory ----------------------------------------------------------------------------------
def status_mb(pid: int, field: str) -> float:
    """``field`` (VmRSS, VmHWM) of ``/proc/PID/status`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/{pid}/status has no {field}")


def reset_hwm(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS; ``False`` when the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- measuring --------------------------------------------------------------------------------------
def serve_args(longest_seconds: float, largest_body: int, max_tokens: int) -> list[str]:
    """``swv serve`` flags that let the longest clip and the largest body through."""
    seconds = f"{int(longest_seconds) + 1}"
    body = max(largest_body + MB, limits.MAX_BODY_BYTES)
    return ["--max-audio-seconds", seconds, "--max-request-audio-seconds", seconds,
            "--max-body-bytes", str(body), "--body-buffer-bytes", str(max(body, limits.BODY_BUFFER_BYTES)),
            "--max-context", str(int(ENCODER_FRAMES_PER_SECOND * longest_seconds) + CONTEXT_MARGIN),
            "--max-tokens", str(max_tokens)]


def measure(model_dir: Path, minutes: float, endpoint: str, bodies: dict, args: argparse.Namespace,
            flags: list[str]) -> Row:
    """One long request on a fresh, warmed-up server (see the module)."""
    server, port = start_server(model_dir, args.threads, {}, flags)
    try:
        for _ in range(2):
            status, _ = post(port, endpoint, *bodies[WARM_UP_MINUTES][endpoint])
            if status != 200:
                raise SystemExit(f"the warm-up request to {ENDPOINTS[endpoint]} was answered {status}")
        before = rss_bytes(server.pid) / MB
        reset = reset_hwm(server.pid)
        with PeakRss(server.pid) as sampled:
            start = time.perf_counter()
            status, reply = post(port, endpoint, *bodies[minutes][endpoint])
            latency = time.perf_counter() - start
        hwm = status_mb(server.pid, "VmHWM") if reset else 0.0
    finally:
        stop_server(server)
    if status != 200:
        raise SystemExit(f"the {minutes:g}-minute clip to {ENDPOINTS[endpoint]} was answered {status}: {reply}")
    sampled_mb = sampled.peak / MB - before
    tokens = reply.get("usage", {}).get("prompt_tokens")
    row = Row(minutes, endpoint, max(hwm - before, sampled_mb), sampled_mb, latency, tokens, reset)
    print(f"  {endpoint} {minutes:g} min: +{row.peak_mb:.0f} MB, {latency:.2f} s (idle RSS {before:.0f} MB)",
          file=sys.stderr, flush=True)
    return row


def slopes(rows: list[Row]) -> list[float | None]:
    """MB added per minute of audio since the previous (shorter) row; ``None`` for the first."""
    return [None] + [(b.peak_mb - a.peak_mb) / (b.minutes - a.minutes) for a, b in zip(rows, rows[1:])]


def verdict(rows: list[Row], flat_factor: float) -> str:
    """Whether the growth per minute of audio stays flat (linear) or grows, with the numbers."""
    steps = [s for s in slopes(rows) if s is not None]
    if not steps:
        return "one length only: no slope"
    first, last = steps[0], steps[-1]
    span = f"{rows[0].minutes:g}->{rows[1].minutes:g} min: {first:.1f} MB/min, " \
           f"{rows[-2].minutes:g}->{rows[-1].minutes:g} min: {last:.1f} MB/min"
    if last <= flat_factor * max(first, 1.0):
        return f"linear: growth per minute stays flat ({span}; within {flat_factor:g}x)"
    return f"GROWS faster than linear: {span} (more than {flat_factor:g}x)"


def print_table(rows: list[Row], flat_factor: float) -> None:
    """The rows of one endpoint, ratios against its shortest length, and the verdict."""
    ref = rows[0]
    header = (f"{'endpoint':>14} {'minutes':>7} {'prompt tok':>10} {'peak growth MB':>14} {'sampled growth MB':>17} "
              f"{'MB/min':>7} {'latency s':>9} {'duration ratio':>14} {'mem ratio':>9} {'latency ratio':>13}")
    print(header)
    print("-" * len(header))
    for row, slope in zip(rows, slopes(rows)):
        tokens = "-" if row.prompt_tokens is None else f"{row.prompt_tokens}"
        per_minute = "-" if slope is None else f"{slope:.1f}"
        print(f"{row.endpoint:>14} {row.minutes:>7g} {tokens:>10} {row.peak_mb:>14.0f} {row.sampled_mb:>17.0f} "
              f"{per_minute:>7} {row.latency:>9.2f} {row.minutes / ref.minutes:>13.1f}x "
              f"{row.peak_mb / max(ref.peak_mb, 1.0):>8.2f}x {row.latency / ref.latency:>12.2f}x")
    print(f"{rows[0].endpoint}: {verdict(rows, flat_factor)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--endpoint", choices=[*ENDPOINTS, "both"], help="default: both (with --quick: chat)")
    parser.add_argument("--recipe", default="tiny", help="recipe whose (random-init) model is served")
    parser.add_argument("--threads", type=int, default=2, help="the server's OMP_NUM_THREADS")
    parser.add_argument("--max-tokens", type=int, default=1, help="new tokens per request (server's --max-tokens)")
    parser.add_argument("--flat-factor", type=float, default=1.5,
                        help="growth is linear when the last MB/min slope is within this factor of the first")
    parser.add_argument("--quick", action="store_true", help="0.5, 1 and 2 minutes; the chat endpoint unless --endpoint")
    args = parser.parse_args()
    if args.quick:
        args.minutes = [0.5, 1, 2]
    lengths = sorted(set(args.minutes))
    endpoint = args.endpoint or ("chat" if args.quick else "both")
    endpoints = list(ENDPOINTS) if endpoint == "both" else [endpoint]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args.recipe)
        clips = {m: wav_bytes(Path(tmp), m) for m in [WARM_UP_MINUTES, *lengths]}
        bodies = {m: {e: body_for(e, wav, args.max_tokens) for e in endpoints} for m, wav in clips.items()}
        largest = max(len(body) for per_endpoint in bodies.values() for body, _ in per_endpoint.values())
        flags = serve_args(lengths[-1] * 60, largest, args.max_tokens)
        rows = {e: [measure(model_dir, m, e, bodies, args, flags) for m in lengths] for e in endpoints}
    report(rows, args, flags)


def report(rows: dict[str, list[Row]], args: argparse.Namespace, flags: list[str]) -> None:
    """The run's settings, one table per endpoint, and how memory was read."""
    print(f"model: recipe {args.recipe!r} (random init); python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPU(s); server OMP_NUM_THREADS={args.threads}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"swv serve limits raised so the longest clip is accepted: {' '.join(flags)}")
    for endpoint_rows in rows.values():
        print()
        print_table(endpoint_rows, args.flat_factor)
    if not all(row.hwm_reset for endpoint_rows in rows.values() for row in endpoint_rows):
        print("(the kernel refused to reset VmHWM for some requests: their peak is the 10 ms sampled one)")
    print(f"(ratios against the {min(args.minutes):g}-minute clip of the same endpoint; a fresh server per request)")


if __name__ == "__main__":
    main()
