"""`swv serve` under hostile requests: server memory and the latency of normal requests.

Each case starts the real ``swv serve`` (``python -m swv.cli serve``, default limits) on a
randomly initialised model (the one ``serve_throughput.py`` builds: Whisper encoder, alignment +
shrinking adapters, Llama backbone with the packaged tiny tokenizer; no downloads) in a
subprocess, warms it up with a normal request, and measures:

* the server's idle RSS (psutil if installed, else /proc/PID/status VmRSS; children included),
  then its peak RSS (sampled every 10 ms) while one client sends the hostile request, again as
  soon as it is answered, for ``--window`` seconds (so one is in flight at any time), then while
  8 such clients do; growth = peak - idle, against a target of 200 MB for one client and 800 MB
  for 8;
* the HTTP statuses the hostile requests received;
* the median latency of GET /health and of a normal small chat request (1 s clip, 8 tokens)
  idle, and while the hostile clients run (probed in a loop until they stop, at least once
  each); the chat ratio loaded / idle, against a target of 2x.

Hostile requests: a WAV and a FLAC whose headers claim hours (the data is 1 s), a real 5-minute
and a 59 s 8-channel 48 kHz FLAC, a 59 s WAV at 4001 Hz, a 30 MB text body, a chunked body
without Content-Length that never ends, 60 clips of 59 s, and 16 MB of nested JSON brackets; and
two uploads to ``/v1/audio/transcriptions`` (``multipart/form-data``): a form of 100,000 tiny
parts and one with a 30 MB text field besides a 1 s clip.
Rows over a target are marked ``OVER``; the exit code is 0 either way (a benchmark, not a test).

    .venv/bin/python benchmarks/serve_bounds.py            # ~7 min on 2 CPU cores
    .venv/bin/python benchmarks/serve_bounds.py --quick    # smaller model, 8 concurrent for one case only
    .venv/bin/python benchmarks/serve_bounds.py --case "30 MB" --server-env MALLOC_ARENA_MAX=2
    .venv/bin/python benchmarks/serve_bounds.py --model-dir DIR --serve-args --max-body-bytes 8388608
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import multiprocessing
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import build_model  # noqa: E402

MODEL_ID = "bench"
SR = 16000
MB = 1024 * 1024
SINGLE_TARGET_MB, CONCURRENT_TARGET_MB, LATENCY_TARGET = 200, 800, 2.0
CONCURRENT = 8


# -- server memory ----------------------------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and its children (psutil, else /proc)."""
    try:
        import psutil
    except ImportError:
        return sum(_proc_rss(p) for p in [pid, *_proc_children(pid)])
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def _proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _proc_children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            children += [int(child), *_proc_children(int(child))]
    return children


class PeakRss:
    """The peak RSS of a process while the ``with`` block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self.peak = rss_bytes(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


# -- hostile bodies -----------------------------------------------------------------------------------
def encoded(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


def silent_flac(seconds: int, rate: int, channels: int) -> bytes:
    """A silent FLAC written a second at a time (a few KB per minute)."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", rate, channels, format="FLAC") as out:
        for _ in range(seconds):
            out.write(np.zeros((rate, channels), np.float32))
    return buffer.getvalue()


def noise(seconds: float, rate: int = SR) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(int(rate * seconds)) * 0.1).astype(np.float32)


def wav_claiming_hours() -> bytes:
    """1 s of 16-bit WAV whose RIFF and data chunk sizes claim ~37 hours."""
    data = bytearray(encoded(noise(1.0), SR, "WAV"))
    at = data.index(b"data")
    data[4:8] = data[at + 4:at + 8] = (0xFFFFFF00).to_bytes(4, "little")
    return bytes(data)


def flac_claiming_hours(hours: int = 10) -> bytes:
    """1 s of FLAC whose STREAMINFO claims ``hours`` hours (total samples: the low 36 bits of
    the 8 bytes after the block sizes)."""
    data = bytearray(encoded(noise(1.0), SR, "FLAC"))
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | (SR * 3600 * hours)
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def chat_body(clips: list[tuple[bytes, str]], text: str = "Transcribe the speech.", **fields) -> bytes:
    parts = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}
             for data, fmt in clips]
    content = [*parts, {"type": "text", "text": text}]
    return json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": content}], **fields}).encode()


#: The boundary of the benchmark's multipart forms.
BOUNDARY = "swvbenchboundary"


@dataclass(frozen=True)
class Upload:
    """A ``multipart/form-data`` body for the transcription endpoint."""

    body: bytes
    path: str = "/v1/audio/transcriptions"
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}"


def form(fields: list[tuple[str, bytes, str | None]]) -> Upload:
    """A form of ``(name, bytes, filename or None)`` parts."""
    parts = []
    for name, data, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return Upload(b"".join(parts) + f"--{BOUNDARY}--\r\n".encode())


def hostile_bodies() -> dict[str, bytes | Upload | None]:
    """The hostile requests by name (``None``: the endless chunked body, sent by :func:`chunked`)."""
    minute59 = silent_flac(59, SR, 1)
    second = encoded(noise(1.0), SR, "WAV")
    return {
        "WAV header claiming 37 h": chat_body([(wav_claiming_hours(), "wav")]),
        "FLAC header claiming 10 h": chat_body([(flac_claiming_hours(), "flac")]),
        "8-ch 48 kHz FLAC, 5 min": chat_body([(silent_flac(300, 48000, 8), "flac")]),
        "8-ch 48 kHz FLAC, 59 s": chat_body([(silent_flac(59, 48000, 8), "flac")]),
        "4001 Hz WAV, 59 s": chat_body([(encoded(noise(59.0, 4001), 4001, "WAV"), "wav")]),
        "30 MB text body": json.dumps({"model": MODEL_ID, "messages": [
            {"role": "user", "content": "word " * (6 * MB)}]}).encode(),
        "chunked body, no length": None,
        "60 clips of 59 s": chat_body([(minute59, "flac")] * 60),
        "16 MB nested JSON": b"[" * (8 * MB) + b"]" * (8 * MB),
        "form of 100k tiny parts": form([("file", second, "a.wav")] + [("x", b"a", None)] * 100_000),
        "form with a 30 MB text field": form([("file", second, "a.wav"), ("model", MODEL_ID.encode(), None),
                                              ("prompt", b"word " * (6 * MB), None)]),
    }


# -- HTTP ---------------------------------------------------------------------------------------------
def request(port: int, method: str, path: str, body: bytes | None = None,
            content_type: str = "application/json") -> int:
    """Send one request, read the whole answer; its status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (ConnectionError, OSError):  # the server may close the connection while a body is sent
        return 0
    finally:
        conn.close()


def chunked(port: int) -> int:
    """A chunked body without Content-Length that never ends: sent until the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=900) as conn:
        # a Host the loopback allow-list accepts: otherwise the request is refused before its body
        conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
                     + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
        try:
            while not select.select([conn], [], [], 0)[0]:
                conn.sendall(chunk)
        except OSError:  # the server closed the connection while a chunk was sent: read its answer
            pass
        try:
            reply = conn.recv(65536)
        except OSError:
            reply = b""
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def sender(port: int, body: bytes | Upload | None) -> Callable[[], int]:
    if body is None:
        return lambda: chunked(port)
    if isinstance(body, Upload):
        return lambda: request(port, "POST", body.path, body.body, body.content_type)
    return lambda: request(port, "POST", "/v1/chat/completions", body)


def timed(call: Callable[[], int]) -> float:
    start = time.perf_counter()
    status = call()
    if status != 200:
        raise RuntimeError(f"a normal request was answered {status}")
    return time.perf_counter() - start


# -- the server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, threads: int, extra_env: dict[str, str],
                 serve_args: list[str]) -> tuple[subprocess.Popen, int]:
    """``swv serve`` (default limits unless ``serve_args`` change them) in a subprocess, once
    /health answers."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **extra_env}
    command = [sys.executable, "-m", "swv.cli", "serve", str(model_dir), "--port", str(port),
               "--model-name", MODEL_ID, *serve_args]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"swv serve exited with {server.returncode}")
        if request(port, "GET", "/health") == 200:
            return server, port
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("swv serve did not answer /health within 300 s")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# -- measuring ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    copies: int
    idle_mb: float
    growth_mb: float
    statuses: list[int]
    health: tuple[float, float]  # median seconds idle, loaded
    chat: tuple[float, float]
    seconds: float
    probes: int = 0
    over: list[str] = field(default_factory=list)


def repeat(send: Callable[[], int], until: float) -> list[int]:
    """Statuses of ``send`` repeated until the clock passes ``until`` (at least once)."""
    statuses = [send()]
    while time.monotonic() < until:
        statuses.append(send())
    return statuses


def probe_until(call: Callable[[], int], futures: list, pause: float) -> list[float]:
    """Latencies of ``call`` repeated until every future is done (at least one)."""
    times = []
    while True:
        times.append(timed(call))
        if all(f.done() for f in futures):
            return times
        time.sleep(pause)


#: The hostile bodies by name, set before the client processes are forked (they inherit it).
BODIES: dict[str, bytes | Upload | None] = {}


def hostile_client(port: int, name: str, until: float) -> list[int]:
    """One hostile client (in its own process, so its work does not hold the probes' GIL)."""
    return repeat(sender(port, BODIES[name]), until)


def measure(server: subprocess.Popen, port: int, name: str, copies: int, window: float,
            normal: Callable[[], int], idle: tuple[float, float, float]) -> Row:
    """Peak RSS and probe latencies while ``copies`` clients send hostile request ``name``, each
    again as soon as the last is answered, for ``window`` seconds (at least one each)."""
    health = lambda: request(port, "GET", "/health")  # noqa: E731
    with ProcessPoolExecutor(copies, mp_context=multiprocessing.get_context("fork")) as clients:
        list(clients.map(abs, range(copies)))  # every client process started before measuring
        start = time.perf_counter()
        with PeakRss(server.pid) as peak, ThreadPoolExecutor(2) as probes:
            futures = [clients.submit(hostile_client, port, name, time.monotonic() + window) for _ in range(copies)]
            health_probes = probes.submit(probe_until, health, futures, 0.02)
            chat_probes = probes.submit(probe_until, normal, futures, 0.0)
            statuses = [status for f in futures for status in f.result()]
            seconds = time.perf_counter() - start
            health_times, chat_times = health_probes.result(), chat_probes.result()
    idle_mb, idle_health, idle_chat = idle
    row = Row("", copies, idle_mb, peak.peak / MB - idle_mb, statuses,
              (idle_health, statistics.median(health_times)), (idle_chat, statistics.median(chat_times)),
              seconds, len(chat_times))
    target = SINGLE_TARGET_MB if copies == 1 else CONCURRENT_TARGET_MB
    row.over += ["memory"] if row.growth_mb > target else []
    row.over += ["latency"] if row.chat[1] > LATENCY_TARGET * row.chat[0] else []
    return row


def run_case(model_dir: Path, name: str, copies: list[int], args: argparse.Namespace,
             normal_body: bytes) -> list[Row]:
    """A fresh server for one hostile case: warm-up, idle figures, then each number of copies."""
    server_env = dict(item.split("=", 1) for item in args.server_env)
    server, port = start_server(model_dir, args.threads, server_env, args.serve_args)
    try:
        normal = lambda: request(port, "POST", "/v1/chat/completions", normal_body)  # noqa: E731
        for _ in range(2):
            timed(normal)
        idle_mb = rss_bytes(server.pid) / MB
        idle_health = statistics.median(timed(lambda: request(port, "GET", "/health")) for _ in range(10))
        idle_chat = statistics.median(timed(normal) for _ in range(args.idle_probes))
        rows = []
        for n in copies:
            row = measure(server, port, name, n, args.window, normal, (idle_mb, idle_health, idle_chat))
            row.case = name
            rows.append(row)
            print(f"  {name} x{n}: +{row.growth_mb:.0f} MB, status {status_text(row.statuses)}, {row.seconds:.1f} s",
                  file=sys.stderr, flush=True)
        return rows
    finally:
        stop_server(server)


def status_text(statuses: list[int]) -> str:
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return ", ".join(f"{s}" if n == 1 else f"{s} x{n}" for s, n in counts.items())


def print_table(rows: list[Row]) -> None:
    print("| case | clients | idle RSS MB | RSS growth MB | target MB | statuses received | window s | "
          "/health ms idle -> loaded | chat s idle -> loaded (loaded probes) | chat loaded/idle | over target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        target = SINGLE_TARGET_MB if r.copies == 1 else CONCURRENT_TARGET_MB
        print(f"| {r.case} | {r.copies} | {r.idle_mb:.0f} | {r.growth_mb:.0f} | <= {target} | "
              f"{status_text(r.statuses)} | {r.seconds:.1f} | {1000 * r.health[0]:.1f} -> {1000 * r.health[1]:.1f} | "
              f"{r.chat[0]:.2f} -> {r.chat[1]:.2f} ({r.probes}) | {r.chat[1] / r.chat[0]:.2f} | "
              f"{'OVER: ' + ', '.join(r.over) if r.over else 'ok'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--enc-dim", type=int, default=128)
    parser.add_argument("--llm-dim", type=int, default=256)
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle-probes", type=int, default=10, help="normal requests timed on the idle server")
    parser.add_argument("--window", type=float, default=5.0,
                        help="seconds each hostile client keeps sending (a request in flight at any time)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller model, 5 idle probes, 2 s window, 8 concurrent copies of the 59 s 8-channel clip only")
    parser.add_argument("--model-dir", type=Path, help="serve this model directory instead of building the tiny one")
    parser.add_argument("--case", action="append", default=[], metavar="TEXT",
                        help="only the cases whose name contains TEXT (repeatable; default: all)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable of the server process (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                        help="the rest of the command line goes to swv serve (e.g. --max-body-bytes 8388608)")
    args = parser.parse_args()
    if args.quick:
        args.enc_dim, args.llm_dim, args.llm_layers, args.idle_probes, args.window = 32, 64, 2, 5, 2.0
    BODIES.update(hostile_bodies())
    normal_body = chat_body([(encoded(noise(1.0), SR, "WAV"), "wav")], max_tokens=8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp) / "model"
        if args.model_dir is None:
            build_model(model_dir, args.enc_dim, args.llm_dim, args.llm_layers)
        for name in [n for n in BODIES if not args.case or any(text in n for text in args.case)]:
            copies = [1] if args.quick and name != "8-ch 48 kHz FLAC, 59 s" else [1, CONCURRENT]
            rows += run_case(model_dir, name, copies, args, normal_body)
    changed = " ".join([*args.server_env, *args.serve_args]) or "none"
    model = args.model_dir or f"LLM {args.llm_layers}x{args.llm_dim}, encoder 2x{args.enc_dim}"
    print(f"swv serve, default limits; changed: {changed}; model {model}; "
          f"{os.cpu_count()} CPU cores; RSS via {'psutil' if _has_psutil() else '/proc VmRSS'}")
    print_table(rows)


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
