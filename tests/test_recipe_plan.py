"""``swv recipe plan``: every number of the plan of the tiny recipe checked against a real run of
it (trainable counts as the run logs them, optimizer steps, rows per step, the rows each source
gave, the epochs and the mixture), the memory estimate against a real optimizer, configs without
weights, Hub ids from the local cache only, and sources of unknown size."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

#: Fewer steps than the shipped tiny recipe, each stage past an epoch boundary (12, 15 and 27
#: global batches per epoch), Stage II with gradient accumulation; no held-out evaluation.
RUN = ["stages.0.max_steps=26", "stages.1.max_steps=20", "stages.1.grad_accum=2", "stages.2.max_steps=30",
       "stages.0.data.eval_datasets=[]", "stages.1.data.eval_datasets=[]", "stages.2.data.eval_datasets=[]",
       "stages.0.log_every=100", "stages.1.log_every=100", "stages.2.log_every=100"]


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    return {**out, "SWV_DISABLE_PLUGIN_AUTOLOAD": "1", **extra}


def swv(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swv.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(**extra))


def logged_counts(stdout: str) -> dict[str, dict[str, dict[str, int]]]:
    """The trainable/total table each stage of a run printed (swv.train.trainable.format_counts)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    current = None
    for line in stdout.splitlines():
        started = re.match(r"== stage (\S+) \(", line)
        if started:
            current = started.group(1)
            out[current] = {}
            continue
        parts = line.split()
        if current is None or len(parts) != 3 or parts[0] in ("module", "all"):
            current = None if parts[:1] == ["all"] else current
            continue
        out[current][parts[0]] = {"trainable": int(parts[1].replace(",", "")), "total": int(parts[2].replace(",", ""))}
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """A real run of the tiny recipe (batches logged), its stdout, and the plan of the same recipe."""
    work = tmp_path_factory.mktemp("plan")
    res = swv("train", "--recipe", "tiny", "output_dir=run", "data.log_batches=true", *RUN, cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    planned = swv("recipe", "plan", "tiny", *RUN, "--json", cwd=work)
    assert planned.returncode == 0, planned.stderr[-2000:]
    return work / "run", res.stdout, json.loads(planned.stdout)


def test_trainable_counts_are_the_runs(tiny) -> None:
    run, stdout, plan = tiny
    logged = logged_counts(stdout)
    assert list(logged) == ["alignment", "shrinking", "sft"]
    for stage in plan["stages"]:
        assert stage["parameters"] == logged[stage["name"]], stage["name"]
        assert stage["trainable"] == sum(c["trainable"] for c in logged[stage["name"]].values())
    # what the tiny recipe trains: the alignment adapter alone, then the backbone and the LoRA too
    first, second, third = (s["parameters"] for s in plan["stages"])
    assert first["adapters.alignment"]["trainable"] == first["adapters.alignment"]["total"] > 0
    assert first["backbone"]["trainable"] == 0 and second["backbone.lora"]["trainable"] > 0
    assert third["adapters.alignment"]["trainable"] == 0 and third["encoder"]["trainable"] == 0


def test_steps_rows_and_epochs_are_the_runs(tiny) -> None:
    run, _, plan = tiny
    batch = json.loads((run / "run.json").read_text())["batch"]
    for stage in plan["stages"]:
        name = stage["name"]
        assert stage["steps"] == json.loads((run / name / "stage.json").read_text())["total_steps"]
        assert stage["rows_per_step"] == batch[name]["rows_per_step"] == stage["global_batch"] * stage["grad_accum"]
        micro = read_jsonl(run / name / "batches-rank0.jsonl")
        assert len(micro) == stage["steps"] * stage["grad_accum"]  # every step took grad_accum global batches
        per_step: dict[int, int] = {}
        for record in micro:
            per_step[record["step"]] = per_step.get(record["step"], 0) + len(record["rows"])
        assert max(per_step.values()) == stage["rows_per_step"]
        assert stage["seen_by"] == "sampler" and stage["rows_seen"] == sum(per_step.values())
        last = read_jsonl(run / name / "metrics.jsonl")[-1]
        assert last["step"] == stage["steps"] and last["epoch"] == math.ceil(stage["epochs"]) - 1
    assert [round(s["epochs"], 4) for s in plan["stages"]] == [round(26 / 12, 4), round(40 / 15, 4), round(30 / 27, 4)]


def _drawn(run: Path, stage: dict) -> list[list[int]]:
    """Per source of ``stage``, the rows (indices within it) the run trained on, from its batch log."""
    sizes = [s["rows"] for s in stage["sources"]]
    rows = [i for record in read_jsonl(run / stage["name"] / "batches-rank0.jsonl") for i in record["rows"]]
    return [[i - sum(sizes[:k]) for i in rows if sum(sizes[:k]) <= i < sum(sizes[: k + 1])] for k in range(len(sizes))]


def test_sources_give_the_runs_rows(tiny) -> None:
    """The rows, epochs and audio hours of each source are the ones the run drew, and the logged
    mixtures are the plan's at the first and the last epoch."""
    from swv.data.manifest import read_manifest
    from swv.data.rows import resolve_data_path
    from swv.recipes.loader import load_recipe

    run, _, plan = tiny
    specs = load_recipe("tiny", RUN).recipe.data.datasets
    for stage in plan["stages"]:
        for source, drawn in zip(stage["sources"], _drawn(run, stage)):
            assert source["rows_seen"] == len(drawn) and source["epochs"] == pytest.approx(len(drawn) / source["rows"])
            records = [r for _, r in read_manifest(resolve_data_path(specs[source["name"]].manifest), required=())]
            seconds = sum(records[i].get("duration", 0) for i in drawn)
            assert source["hours_seen"] == pytest.approx(seconds / 3600), (stage["name"], source["name"])
        events = [r for r in read_jsonl(run / stage["name"] / "metrics.jsonl") if r.get("event") == "mixture"]
        assert events[0]["temperature"] == stage["temperature_start"]
        assert events[-1]["temperature"] == stage["temperature_end"]
        for event, key in ((events[0], "probability_start"), (events[-1], "probability_end")):
            assert event["mixture"] == {s["name"]: round(s[key], 4) for s in stage["sources"]}
    shrinking = plan["stages"][1]
    assert (shrinking["temperature_start"], shrinking["temperature_end"]) == (1.0, 11.0)  # T + 5 per epoch, epochs 0..2
    asr, text_qa = shrinking["sources"]
    assert asr["probability_start"] > asr["probability_end"] and asr["epochs"] < text_qa["epochs"]


def test_without_durations_the_shares_are_expected_values(tmp_path: Path, tiny, cli) -> None:
    """A manifest without durations cannot be drawn like the loader would (it reads the audio
    files): the plan gives expected values, close to what the run drew."""
    from swv.data.manifest import read_manifest, write_manifest
    from swv.data.rows import resolve_data_path

    run, _, plan = tiny
    source = resolve_data_path("asset:tiny_speech/train_asr.jsonl")
    records = [{**{k: v for k, v in r.items() if k != "duration"}, "audio": str(source.parent / r["audio"])}
               for _, r in read_manifest(source)]
    write_manifest(tmp_path / "asr.jsonl", records)
    code, out, err = cli(["recipe", "plan", "tiny", *RUN, f"data.datasets.asr.manifest={tmp_path / 'asr.jsonl'}", "--json"])
    assert code == 0, err
    untimed = json.loads(out)
    for stage, exact in zip(untimed["stages"][:2], plan["stages"][:2]):
        assert stage["seen_by"] == "expected" and stage["hours_seen"] is None
        assert (stage["steps"], stage["epochs"]) == (exact["steps"], pytest.approx(exact["epochs"], abs=0.1))
        for source, drawn in zip(stage["sources"], _drawn(run, exact)):
            assert abs(source["rows_seen"] - len(drawn)) <= 4 * math.sqrt(len(drawn)) + stage["global_batch"]
    assert any("asr" in note and "no duration field" in note for note in untimed["notes"])


def test_hours_and_tokens_follow_the_manifests(tiny) -> None:
    from swv.data.manifest import read_manifest
    from swv.data.rows import resolve_data_path

    _, _, plan = tiny
    asr = plan["sources"]["asr"]
    seconds = sum(r["duration"] for _, r in read_manifest(resolve_data_path("asset:tiny_speech/train_asr.jsonl")))
    assert asr["rows"] == 96 and asr["hours"] == pytest.approx(seconds / 3600)
    assert plan["sources"]["text_qa"]["hours"] == 0 and plan["sources"]["text_qa"]["tokens"] > 0
    first = plan["stages"][0]  # one source: whole epochs of it, then part of one
    assert first["tokens_seen"] >= asr["tokens"] * 2 and first["hours_seen"] >= asr["hours"] * 2
    assert first["tokens_seen"] < asr["tokens"] * 3 and first["hours_seen"] < asr["hours"] * 3


def test_memory_is_a_real_optimizers(tiny) -> None:
    """Weights, gradients and AdamW states of the real (not meta) model after one step are the plan's."""
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.runner import build_model
    from swv.train.trainable import apply_trainable

    _, _, plan = tiny
    loaded = load_recipe("tiny", RUN, default_registry())
    model = build_model(loaded, None)
    for index, stage in enumerate(plan["stages"]):
        apply_trainable(model, list(loaded.recipe.stages[index].trainable), "test")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params)
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        states = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
        memory = stage["memory_bytes"]
        assert memory["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())
        assert memory["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in params)
        assert memory["adamw"] == sum(t.numel() * t.element_size() for t in states)
        model.zero_grad(set_to_none=True)


def test_table_shows_the_plan(tiny, cli) -> None:
    _, stdout, plan = tiny
    code, out, err = cli(["recipe", "plan", "tiny", *RUN])
    assert code == 0, err
    first = plan["stages"][0]
    alignment_block = stdout.split("== stage alignment (alignment) ==\n", 1)[1].split("\n  all", 1)[0]
    assert alignment_block in out  # the run's own table, as the run printed it
    assert f"rows per optimizer step: {first['rows_per_step']} = global batch 8 x 1 accumulation" in out
    assert "optimizer steps: 26\n" in out and "epochs of the mixture: 2.17 (12 global batches of 96 rows per epoch)" in out
    assert "temperature: 1 at the start, 11 at the end" in out
    assert re.search(r"\n  asr +96 +[\d.]+ +[\d,]+ +1\.0000 +1\.0000 +2\.17 ", out)
    assert "weights = sum(numel x bytes of dtype)" in out


def _without_weights(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for file in src.iterdir():
        if file.is_file() and file.suffix not in (".safetensors", ".bin"):
            shutil.copy(file, dest / file.name)
    return dest


def test_checkpoints_without_weights_give_the_real_counts(tmp_path: Path, tiny_whisper_dir: Path,
                                                          tiny_llama_dir: Path, cli) -> None:
    """Components given as checkpoint directories are built from their config.json (and tokenizer)
    alone: the counts are those of the model loaded with its weights."""
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.runner import build_model
    from swv.train.trainable import apply_trainable

    def with_dirs(encoder: Path, backbone: Path) -> list[str]:
        return ["model.encoder.random_init=null", f"model.encoder.path={encoder}", "model.backbone.random_init=null",
                f"model.backbone.path={backbone}", "model.backbone.tokenizer=null"]

    bare = with_dirs(_without_weights(tiny_whisper_dir, tmp_path / "w"), _without_weights(tiny_llama_dir, tmp_path / "l"))
    code, out, err = cli(["recipe", "plan", "tiny", *bare, "--json"])
    assert code == 0, err
    plan = json.loads(out)
    model = build_model(load_recipe("tiny", with_dirs(tiny_whisper_dir, tiny_llama_dir), default_registry()), None)
    for index, stage in enumerate(plan["stages"]):
        counts = apply_trainable(model, list(stage["trainable_patterns"]), "test")
        assert stage["parameters"] == {g: {"trainable": t, "total": n} for g, (t, n) in counts.items()}, index


def _cache_snapshot(cache: Path, repo: str, source: Path) -> None:
    """``source``'s config and tokenizer files as the Hugging Face cache holds a snapshot of ``repo``."""
    commit = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    _without_weights(source, folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_hub_ids_come_from_the_local_cache_only(tmp_path: Path, tiny_whisper_dir: Path, tiny_llama_dir: Path) -> None:
    cache = tmp_path / "hub"
    offline = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    res = swv("recipe", "plan", "soundwave", cwd=tmp_path, **offline)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "model.encoder.path (openai/whisper-large-v3); model.backbone.path (meta-llama/Llama-3.1-8B-Instruct)" in res.stderr
    assert "never downloads" in res.stderr
    _cache_snapshot(cache, "test/whisper", tiny_whisper_dir)
    _cache_snapshot(cache, "test/llama", tiny_llama_dir)
    res = swv("recipe", "plan", "soundwave", "model.encoder.path=test/whisper", "model.backbone.path=test/llama",
              "--json", cwd=tmp_path, **offline)
    assert res.returncode == 0, res.stderr[-2000:]
    plan = json.loads(res.stdout)
    # sources of unknown size (the recipe's placeholder manifests): steps from max_steps, the rest unknown
    assert [s["steps"] for s in plan["stages"]] == [6000, 6000, 4000]
    assert [s["rows_per_step"] for s in plan["stages"]] == [8192, 4096, 1024]
    assert all(s["epochs"] is None and s["temperature_end"] is None and s["rows_seen"] is None for s in plan["stages"])
    assert plan["stages"][2]["temperature_start"] == 5.0
    assert "data source 'asr' (manifest data/asr_train.jsonl): not found: size unknown" in plan["notes"]
    assert [set(g for g, c in s["parameters"].items() if c["trainable"]) for s in plan["stages"]] == [
        {"adapters.alignment"}, {"adapters.alignment", "adapters.shrinking", "backbone.lora"},
        {"adapters.shrinking", "backbone.lora"}]
