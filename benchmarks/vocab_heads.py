"""Vocabulary-sized heads: peak memory and time of the CTC and LM losses, factored vs materialised.

Each case runs one forward + backward of a vocabulary-sized head and its loss, from the head's
input hidden states (which require grad, as the adapters' and LoRA's outputs do; the head
weight is frozen, as by default) to the gradient of those hidden states:

* ``ctc``: the alignment adapter's CTC head + ``swv.model.losses.ctc_loss`` (Stage I);
* ``lm``: the LM head + ``swv.model.losses.lm_loss`` on a Stage II-like batch (prompt, audio
  tokens and answer; labels on the answer only).

``materialised`` is the previous computation: the full ``[B, T, V]`` logits, ``log_softmax``
(CTC) or cross-entropy over every position (LM). ``factored`` is :class:`VocabLogits`. Every
run is its own subprocess; peak memory is that process's peak RSS above its RSS once the inputs
exist (Linux: ``/proc/self/clear_refs``), the largest over ``--repeats`` runs; time is the best
of those runs, the two variants alternating. The ratios compare the two variants measured in
the same run.

    nice -n 19 .venv/bin/python benchmarks/vocab_heads.py           # ~5 min on 2 CPU cores, ~14 GB peak
    nice -n 19 .venv/bin/python benchmarks/vocab_heads.py --quick   # the demo sizes only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from swv.model.losses import ctc_loss, lm_loss
from swv.nn.vocab_logits import VocabLogits


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "ctc" or "lm"
    vocab: int
    dim: int
    batch: int
    length: int  # CTC frames, or LM sequence length
    targets: int  # CTC target tokens, or labelled answer tokens per row


CASES = [
    Case("CTC, paper scale (Llama-3.1 vocab, 30 s windows)", "ctc", 128_256, 64, 8, 750, 90),
    Case("CTC, demo (SmolLM2-135M)", "ctc", 49_153, 576, 16, 40, 12),
    Case("LM, Stage II, Llama-3.2-1B head", "lm", 128_256, 2048, 8, 130, 30),
    Case("LM, Stage II, demo (SmolLM2-135M)", "lm", 49_153, 576, 16, 130, 30),
]
VARIANTS = ("materialised", "factored")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> float:
    """Reset this process's peak RSS (Linux: ``clear_refs`` 5) and return the current RSS in MB."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_mb("VmRSS")


def inputs(case: Case) -> dict:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(case.vocab, case.dim, generator=gen) * case.dim**-0.5
    hidden = torch.randn(case.batch, case.length, case.dim, generator=gen)
    if case.kind == "ctc":
        targets = torch.randint(0, case.vocab - 1, (case.batch, case.targets), generator=gen)
        return dict(weight=weight, hidden=hidden, targets=targets,
                    lengths=torch.full((case.batch,), case.length), target_lengths=torch.full((case.batch,), case.targets))
    labels = torch.full((case.batch, case.length), -100)
    labels[:, -case.targets :] = torch.randint(0, case.vocab, (case.batch, case.targets), generator=gen)
    return dict(weight=weight, hidden=hidden, labels=labels)


def step(case: Case, variant: str, data: dict) -> None:
    """One forward + backward (the gradient of the hidden states)."""
    hidden = data["hidden"].clone().requires_grad_()
    weight = data["weight"]
    if case.kind == "ctc":
        blank = case.vocab - 1
        if variant == "factored":
            loss = ctc_loss(VocabLogits(hidden, weight), data["lengths"], data["targets"], data["target_lengths"], blank)
        else:
            log_probs = F.linear(hidden, weight).float().log_softmax(-1).transpose(0, 1)
            loss = F.ctc_loss(log_probs, data["targets"], data["lengths"], data["target_lengths"], blank=blank,
                              reduction="mean", zero_infinity=True)
    else:
        logits = VocabLogits(hidden, weight) if variant == "factored" else F.linear(hidden, weight)
        loss = lm_loss(logits, data["labels"])
    loss.backward()


def worker(case: Case, variant: str) -> dict:
    torch.manual_seed(0)
    data = inputs(case)
    baseline = reset_peak_rss()
    start = time.perf_counter()
    step(case, variant, data)
    return {"seconds": time.perf_counter() - start, "peak_mb": _status_mb("VmHWM") - baseline}


def measure(index: int, variant: str) -> dict:
    command = [sys.executable, __file__, "--worker", str(index), "--variant", variant]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        sys.exit(f"{CASES[index].name}, {variant}: the worker failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo sizes only")
    parser.add_argument("--case", type=int, action="append", choices=range(len(CASES)),
                        help="run only this case (0-based index in CASES; repeatable)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per (case, variant); the best is kept")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(CASES[args.worker], args.variant)))
        return
    cases = [i for i, case in enumerate(CASES) if (not args.quick or "demo" in case.name) and (not args.case or i in args.case)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; peak = RSS above the inputs (max over "
          f"runs), time = best of {args.repeats} runs, alternating the variants")
    header = f"{'case':52} {'B x T x V (D)':>26} {'variant':>13} {'peak MB':>9} {'time s':>8}"
    print(header)
    print("-" * len(header))
    for index in cases:
        case = CASES[index]
        shape = f"{case.batch} x {case.length} x {case.vocab:,} ({case.dim})"
        runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
        for _ in range(args.repeats):  # round-robin, so bursts of load from other jobs hit both variants
            for variant in VARIANTS:
                runs[variant].append(measure(index, variant))
        best = {v: {"seconds": min(r["seconds"] for r in rs), "peak_mb": max(r["peak_mb"] for r in rs)} for v, rs in runs.items()}
        for variant, r in best.items():
            print(f"{case.name:52} {shape:>26} {variant:>13} {r['peak_mb']:9.0f} {r['seconds']:8.3f}", flush=True)
        m, f = best["materialised"], best["factored"]
        print(f"{'':52} {'':>26} {'ratio':>13} {m['peak_mb'] / max(f['peak_mb'], 1):8.1f}x "
              f"{f['seconds'] / m['seconds']:7.2f}x   (memory: materialised/factored; time: factored/materialised)")


if __name__ == "__main__":
    main()
