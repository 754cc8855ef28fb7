"""`swv serve` scheduling: the window batcher (a batch runs to completion) vs per-token
scheduling (continuous batching: requests join and leave the running batch at token boundaries).

One run builds the randomly initialised model of ``serve_throughput.py`` (no downloads), loads it
like ``swv serve`` does and starts the real server (uvicorn on 127.0.0.1) once per scheduler,
``--scheduling window`` and ``--scheduling continuous``, with the same model in the same run.
Measured through the HTTP API, for each:

* **idle**: latency of a short request (``max_tokens`` 1) on an idle server (median of
  ``2 * --repeats + 1``);
* **behind long**: latency of the same request sent ``--delay`` s after a long one
  (``--long-tokens`` new tokens, no length bound; median of ``--repeats``), and ``/idle``;
* **16 clients**: ``--clients`` concurrent requests (``--max-tokens`` new tokens each),
  ``--rounds`` times: requests/s and completion tokens/s.

The last lines give the ratios (continuous / window) and check that both schedulers gave the
same greedy answers.

    .venv/bin/python benchmarks/serve_continuous.py            # ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/serve_continuous.py --quick    # smaller model, < 1 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from serve_throughput import MODEL_ID, build_model, post, request_body  # noqa: E402

from swv.infer.pipeline import Pipeline  # noqa: E402
from swv.serve import limits  # noqa: E402
from swv.serve.app import create_app  # noqa: E402
from swv.serve.background import BackgroundServer  # noqa: E402
from swv.serve.settings import ServeSettings  # noqa: E402


def long_body(seconds: float, tokens: int) -> bytes:
    """A request for ``tokens`` new tokens that nothing cuts short but the model's stop token."""
    body = json.loads(request_body(99, seconds, tokens))
    body["messages"][0]["content"][1]["text"] = "Describe the sound at length."
    return json.dumps(body).encode()


def behind_long(url: str, short: bytes, long: bytes, delay: float) -> tuple[float, int]:
    """Latency of ``short`` sent ``delay`` s after ``long``, and the long answer's tokens."""
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(tokens=post(url, long)[1]))
    thread.start()
    time.sleep(delay)
    seconds = post(url, short)[2]
    thread.join()
    return seconds, result["tokens"]


def measure(pipe: Pipeline, scheduling: str, args: argparse.Namespace) -> dict:
    settings = ServeSettings(model_id=MODEL_ID, max_context=4096, max_batch=args.max_batch,
                             batch_window_seconds=0.01, scheduling=scheduling)
    short = request_body(7, args.seconds, 1)
    long = long_body(args.seconds, args.long_tokens)
    bodies = [request_body(i, args.seconds, args.max_tokens) for i in range(args.clients)]
    with BackgroundServer(create_app(pipe, settings)) as server:
        post(server.url, short)  # warm-up
        idle = statistics.median(post(server.url, short)[2] for _ in range(2 * args.repeats + 1))
        loaded = [behind_long(server.url, short, long, args.delay) for _ in range(args.repeats)]
        answers, tokens = [], 0
        start = time.perf_counter()
        with ThreadPoolExecutor(len(bodies)) as pool:
            for _ in range(args.rounds):
                for text, n, _ in pool.map(lambda b: post(server.url, b), bodies):
                    answers.append(text)
                    tokens += n
        wall = time.perf_counter() - start
    return {"idle": idle, "behind": statistics.median(s for s, _ in loaded), "long_tokens": min(n for _, n in loaded),
            "rps": len(answers) / wall, "tps": tokens / wall, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--long-tokens", type=int, default=880)
    parser.add_argument("--delay", type=float, default=0.3, help="seconds between the long and the short request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="longest clip (clips are 60-100%% of it)")
    parser.add_argument("--enc-dim", type=int, default=128)
    parser.add_argument("--llm-dim", type=int, default=256)
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small model, 1 round, 300-token long request")
    args = parser.parse_args()
    if args.quick:
        args.enc_dim, args.llm_dim, args.llm_layers, args.rounds, args.long_tokens, args.repeats = 32, 64, 2, 1, 300, 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args.enc_dim, args.llm_dim, args.llm_layers)
        pipe = Pipeline.from_pretrained(model_dir)
        old, new = (measure(pipe, scheduling, args) for scheduling in (limits.WINDOW, limits.CONTINUOUS))
    print(f"LLM {args.llm_layers}x{args.llm_dim}, encoder 2x{args.enc_dim}, {args.threads} torch thread(s); "
          f"short request: 1 new token; long request: {args.long_tokens} asked, >= {min(old['long_tokens'], new['long_tokens'])} "
          f"generated, short sent {args.delay:g} s after it; {args.clients} clients x {args.rounds} round(s), "
          f"{args.max_tokens} new tokens, max batch {args.max_batch}")
    print("| scheduler | idle s | behind long s | behind / idle | requests/s | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, r in (("window batcher", old), ("continuous", new)):
        print(f"| {name} | {r['idle']:.3f} | {r['behind']:.3f} | {r['behind'] / r['idle']:.1f} | {r['rps']:.2f} | "
              f"{r['tps']:.1f} |")
    print(f"continuous / window: behind-long latency x{new['behind'] / old['behind']:.3f}, "
          f"throughput x{new['rps'] / old['rps']:.2f}; greedy answers equal: "
          f"{'yes' if new['answers'] == old['answers'] else 'NO'}")
    if new["answers"] != old["answers"]:
        sys.exit("the schedulers' greedy answers differ")


if __name__ == "__main__":
    main()
