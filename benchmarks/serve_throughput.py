"""`swv serve` throughput: concurrent requests batched vs served one at a time.

One run builds a randomly initialised model (Whisper encoder, alignment + shrinking adapters,
Llama backbone with the packaged tiny tokenizer: no downloads), saves and loads it like
``swv serve`` does, and starts the real server (uvicorn on 127.0.0.1, a free port) once per
setting. ``--clients`` clients then send their requests at the same time (each a different
synthetic clip, greedy, ``--max-tokens`` new tokens) through the HTTP API, ``--rounds`` times.
Settings: one at a time (max batch 1) and batched (max batch 8 and 16, 10 ms collection
window). Reported: wall time, requests/s, completion tokens/s, the mean request latency, and
the throughput ratio vs one at a time measured in the same run. Every batched answer is
checked to equal the one-at-a-time answer for the same request.

    .venv/bin/python benchmarks/serve_throughput.py            # ~1-2 min on 2 CPU cores
    .venv/bin/python benchmarks/serve_throughput.py --quick    # tiny model, < 30 s
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from swv.assets import asset_path  # noqa: E402
from swv.infer.pipeline import Pipeline  # noqa: E402
from swv.model.speechlm import SpeechLM, SpeechLMConfig  # noqa: E402
from swv.serve.app import create_app  # noqa: E402
from swv.serve.background import BackgroundServer  # noqa: E402
from swv.serve.settings import ServeSettings  # noqa: E402

SR = 16000
MODEL_ID = "bench"


def build_model(directory: Path, enc_dim: int, llm_dim: int, llm_layers: int) -> None:
    torch.manual_seed(0)
    config = SpeechLMConfig(
        encoder={"name": "whisper", "mode": "trim", "random_init": {
            "d_model": enc_dim, "encoder_layers": 2, "encoder_attention_heads": max(1, enc_dim // 64),
            "encoder_ffn_dim": 4 * enc_dim, "num_mel_bins": 80, "max_source_positions": 1500}},
        adapters=[{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}],
        backbone={"name": "llama", "tokenizer": str(asset_path("tiny_tokenizer")), "random_init": {
            "hidden_size": llm_dim, "intermediate_size": 4 * llm_dim, "num_hidden_layers": llm_layers,
            "num_attention_heads": max(1, llm_dim // 64), "num_key_value_heads": max(1, llm_dim // 64),
            "max_position_embeddings": 4096}},
    )
    SpeechLM(config).save_pretrained(directory)


def request_body(index: int, seconds: float, max_tokens: int) -> bytes:
    rng = np.random.default_rng(index)
    buffer = io.BytesIO()
    sf.write(buffer, (rng.standard_normal(int(SR * seconds * (0.6 + 0.4 * (index % 5) / 4))) * 0.1).astype(np.float32),
             SR, format="WAV")
    audio = base64.b64encode(buffer.getvalue()).decode()
    return json.dumps({"model": MODEL_ID, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
        {"type": "text", "text": "Transcribe the speech."}]}]}).encode()


def post(url: str, body: bytes) -> tuple[str, int, float]:
    start = time.perf_counter()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.loads(response.read())
    return reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"], time.perf_counter() - start


def measure(pipe: Pipeline, max_batch: int, window: float, bodies: list[bytes], rounds: int) -> dict:
    settings = ServeSettings(model_id=MODEL_ID, max_context=4096, max_batch=max_batch, batch_window_seconds=window)
    with BackgroundServer(create_app(pipe, settings)) as server:
        post(server.url, bodies[0])  # warm-up
        answers, tokens, latencies = [], 0, []
        start = time.perf_counter()
        with ThreadPoolExecutor(len(bodies)) as pool:
            for _ in range(rounds):
                for text, n, seconds in pool.map(lambda b: post(server.url, b), bodies):
                    answers.append(text)
                    tokens += n
                    latencies.append(seconds)
        wall = time.perf_counter() - start
    n = len(bodies) * rounds
    return {"answers": answers, "wall": wall, "rps": n / wall, "tps": tokens / wall, "latency": sum(latencies) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="longest clip (clips are 60-100%% of it)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--enc-dim", type=int, default=128)
    parser.add_argument("--llm-dim", type=int, default=256)
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 round, 8 new tokens")
    args = parser.parse_args()
    if args.quick:
        args.enc_dim, args.llm_dim, args.llm_layers, args.rounds, args.max_tokens = 32, 64, 2, 1, 8
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args.enc_dim, args.llm_dim, args.llm_layers)
        pipe = Pipeline.from_pretrained(model_dir)
        bodies = [request_body(i, args.seconds, args.max_tokens) for i in range(args.clients)]
        rows = [("one at a time", 1, 0.0), ("batched, max 8", 8, 0.01), ("batched, max 16", 16, 0.01)]
        results = [(name, measure(pipe, batch, window, bodies, args.rounds)) for name, batch, window in rows]
    base = results[0][1]
    print(f"{args.clients} concurrent clients x {args.rounds} round(s), {args.max_tokens} new tokens, clips "
          f"<= {args.seconds:g} s; LLM {args.llm_layers}x{args.llm_dim}, encoder 2x{args.enc_dim}, "
          f"{args.threads} torch thread(s)")
    print("| setting | wall s | requests/s | tokens/s | mean latency s | x one-at-a-time | answers equal |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results:
        same = "yes" if r["answers"] == base["answers"] else "NO"
        print(f"| {name} | {r['wall']:.2f} | {r['rps']:.2f} | {r['tps']:.1f} | {r['latency']:.2f} | "
              f"{r['rps'] / base['rps']:.2f} | {same} |")
    if any(r["answers"] != base["answers"] for _, r in results):
        sys.exit("batched answers differ from one-at-a-time answers")


if __name__ == "__main__":
    main()
