"""Clips/s read from tar shards vs from loose files, on the same generated clips, in one run.

Writes N FLAC clips (one file each) and a manifest, packs them with `swv data shard`
(`swv.data.shards.write_shards`), then times reading and decoding every clip (swv's soundfile
reader, resampling included) three ways:

- loose files: one file opened per clip, in the sampler's random order (what a manifest source does);
- shards, sequential: `read_shard` over every shard, decoding each clip's bytes;
- shards source: the `shards:` recipe source's Arrow table, rows fetched in the same random
  order (what training does with shards; the one-off load into the table is timed separately).

Each number is the best of --repeats passes (the page cache is warm after the first pass:
this measures per-file overhead, not the disk). Usage:
    python benchmarks/shard_read.py [--clips 2000] [--seconds 2.0] [--clips-per-shard 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def make_clips(root: Path, count: int, seconds: float, sr: int) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(0)
    (root / "clips").mkdir(parents=True)
    lines = []
    for i in range(count):
        name = f"clips/{i:07d}.flac"
        sf.write(root / name, (rng.standard_normal(int(sr * seconds)) * 0.1).astype(np.float32), sr, format="FLAC")
        lines.append(json.dumps({"id": f"c{i}", "audio": name, "text": f"clip {i}", "duration": seconds}) + "\n")
    manifest = root / "m.jsonl"
    manifest.write_text("".join(lines))
    return manifest


def best_rate(fn, count: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--clips-per-shard", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args()

    from swv.core.audio import load_audio
    from swv.data.shards import read_shard, shard_files, write_shards
    from swv.data.sources import load_source
    from swv.recipes.schema import DatasetSpec

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = make_clips(root, args.clips, args.seconds, args.sample_rate)
        write_shards(manifest, root / "shards", clips_per_shard=args.clips_per_shard, show_progress=False)
        order = np.random.default_rng(1).permutation(args.clips).tolist()
        sr = args.sample_rate

        plain = load_source("loose", DatasetSpec(manifest=str(manifest)), cache_dir=str(root / "cache"))
        paths = plain["audio"]

        def loose(decode: bool) -> None:
            for i in order:
                if decode:
                    load_audio(paths[i], sr)
                else:
                    Path(paths[i]).read_bytes()

        def sequential(decode: bool) -> None:
            for shard in shard_files(root / "shards"):
                for _, _, audio in read_shard(shard):
                    if decode:
                        load_audio(audio, sr)

        start = time.perf_counter()
        table = load_source("sharded", DatasetSpec(shards=str(root / "shards")), cache_dir=str(root / "cache"))
        load_seconds = time.perf_counter() - start

        def from_table(decode: bool) -> None:
            for i in order:
                audio = table[i]["audio_bytes"]
                if decode:
                    load_audio(audio, sr)

        paths_to_time = {"loose files (random order)": loose, "shards, sequential": sequential,
                         "shards source table (random order)": from_table}
        rates = {name: [best_rate(lambda: fn(decode), args.clips, args.repeats) for decode in (False, True)]
                 for name, fn in paths_to_time.items()}
        base = rates["loose files (random order)"]
        shards = len(shard_files(root / "shards"))
        print(f"{args.clips} clips x {args.seconds:g} s FLAC at {sr} Hz; {shards} shards of {args.clips_per_shard}; "
              f"best of {args.repeats}")
        print(f"{'read path':38s} {'bytes clips/s':>14s} {'vs loose':>9s} {'decoded clips/s':>16s} {'vs loose':>9s}")
        for name, (raw, decoded) in rates.items():
            print(f"{name:38s} {raw:14.0f} {raw / base[0]:8.2f}x {decoded:16.0f} {decoded / base[1]:8.2f}x")
        print(f"one-off load of the shards into the source's Arrow table: {load_seconds:.2f} s "
              f"({args.clips / load_seconds:.0f} clips/s)")


if __name__ == "__main__":
    main()
