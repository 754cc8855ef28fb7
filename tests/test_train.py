"""Training: the tiny recipe end to end through the CLI, resume after a kill (with data loader
workers), the mixture sampler and bad-data errors. Multi-process training: test_train_distributed.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from swv.core.errors import InputError, SwvError, UsageError
from swv.data.sampler import MixtureSampler, mixture_probabilities
from swv.recipes.loader import load_recipe
from swv.registry.plugins import default_registry

FAST = ["stages.0.max_steps=30", "stages.1.max_steps=16", "stages.2.max_steps=16",
        "stages.0.log_every=5", "stages.1.log_every=4", "stages.2.log_every=4"]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    out["SWV_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return out


def swv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swv.cli", *args], capture_output=True, text=True, cwd=cwd, env=env())


def losses(path: Path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, path.read_text().splitlines()) if key in r]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("train")
    res = swv("train", "--recipe", "tiny", "output_dir=run", *FAST, cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    return work / "run"


def test_tiny_recipe_end_to_end(tiny_run: Path) -> None:
    for stage in ("alignment", "shrinking", "sft"):
        assert (tiny_run / stage / "export" / "swv_config.json").is_file()
        assert json.loads((tiny_run / stage / "stage.json").read_text())["done"] is True
    ctc = losses(tiny_run / "alignment" / "metrics.jsonl", "ctc_loss")
    assert len(ctc) == 6 and ctc[-1] < ctc[0] * 0.7
    lm = losses(tiny_run / "shrinking" / "metrics.jsonl", "lm_loss")
    assert lm[-1] < lm[0]
    assert losses(tiny_run / "shrinking" / "metrics.jsonl", "ctc_loss")  # Stage II carries CTC too
    sft = losses(tiny_run / "sft" / "metrics.jsonl", "lm_loss")
    assert sft[-1] < sft[0]
    mixtures = [r for r in map(json.loads, (tiny_run / "shrinking" / "metrics.jsonl").read_text().splitlines()) if r.get("event") == "mixture"]
    assert mixtures[0]["temperature"] == 1.0 and mixtures[1]["temperature"] == 6.0
    assert mixtures[0]["mixture"]["asr"] > mixtures[1]["mixture"]["asr"] > 0.5
    held_out = losses(tiny_run / "alignment" / "metrics.jsonl", "eval_ctc_loss")
    assert len(held_out) == 1 and held_out[0] < ctc[0]
    assert losses(tiny_run / "sft" / "metrics.jsonl", "eval_lm_loss")
    run = json.loads((tiny_run / "run.json").read_text())
    assert run["stages"] == ["alignment", "shrinking", "sft"]


def test_tiny_run_exports_cards_and_their_own_lora_base(tiny_run: Path) -> None:
    """Each stage's export records every stage so far with its data and held-out metrics, and the
    LoRA of a stage loaded from the previous export names its own bundled backbone."""
    sft = tiny_run / "sft" / "export"
    training = json.loads((sft / "swv_config.json").read_text())["training"]
    assert [r["stage"] for r in training] == ["alignment", "shrinking", "sft"]
    assert training[-1]["steps"] == 16 and training[-1]["recipe"] == "tiny.yaml"
    assert set(training[-1]["metrics"]) >= {"eval_loss", "eval_lm_loss"} and "dev_sft" in training[-1]["datasets"]
    card = (sft / "README.md").read_text()
    for record in training:
        assert f"| {record['stage']} | {record['kind']} | tiny.yaml | {record['steps']} |" in card
    assert f"eval_loss {training[-1]['metrics']['eval_loss']:.4g}" in card
    assert json.loads((sft / "adapter_config.json").read_text())["base_model_name_or_path"] == "backbone"


def test_exports_reload_and_stage_chain(tiny_run: Path) -> None:
    from swv.model.speechlm import SpeechLM

    model = SpeechLM.from_pretrained(tiny_run / "sft" / "export")
    assert list(model.adapters) == ["alignment", "shrinking"]
    # the SFT stage did not train the alignment adapter: it equals Stage II's export
    a2 = load_file(str(tiny_run / "shrinking" / "export" / "adapters" / "alignment.safetensors"))
    a3 = load_file(str(tiny_run / "sft" / "export" / "adapters" / "alignment.safetensors"))
    assert all(torch.equal(a2[k], a3[k]) for k in a2)
    s2 = load_file(str(tiny_run / "shrinking" / "export" / "adapters" / "shrinking.safetensors"))
    s3 = load_file(str(tiny_run / "sft" / "export" / "adapters" / "shrinking.safetensors"))
    assert any(not torch.equal(s2[k], s3[k]) for k in s2)
    files = {p.name for p in (tiny_run / "sft" / "export").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "backbone", "encoder", "adapters"} <= files


def test_rerun_skips_finished_stages(tiny_run: Path) -> None:
    res = swv("train", "--recipe", "tiny", "output_dir=run", *FAST, cwd=tiny_run.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("already done") == 3


def test_other_recipe_in_same_output_dir_is_refused(tiny_run: Path) -> None:
    res = swv("train", "--recipe", "tiny", "output_dir=run", *FAST, "stages.0.optimizer.lr=0.001", "--stage", "alignment",
              cwd=tiny_run.parent)
    assert res.returncode == 2
    assert "holds checkpoints of a different recipe (stages.0.optimizer.lr: 0.003 -> 0.001)" in res.stderr
    assert res.stderr.count("\n") == 1


def test_stage_selection_errors(tmp_path: Path) -> None:
    res = swv("train", "--recipe", "tiny", "output_dir=run", "--stage", "nope", cwd=tmp_path)
    assert res.returncode == 2 and "--stage 'nope': no such stage" in res.stderr
    res = swv("train", "--recipe", "tiny", "output_dir=run", "--stage", "sft", cwd=tmp_path)
    assert res.returncode == 2 and "starts from stage 'shrinking''s export" in res.stderr
    res = swv("train", "--recipe", "tiny", "output_dir=run", "--resume", cwd=tmp_path)
    assert res.returncode == 2 and "holds no checkpoint" in res.stderr


def _final_alignment(work: Path) -> dict[str, torch.Tensor]:
    return load_file(str(work / "run" / "alignment" / "export" / "adapters" / "alignment.safetensors"))


def test_kill_and_resume_gives_identical_weights(tmp_path: Path) -> None:
    args = ["train", "--recipe", "tiny", "output_dir=run", "--stage", "alignment", "stages.0.max_steps=60",
            "stages.0.save_every=5", "stages.0.keep_last=20", "stages.0.batch_size=4", "data.num_workers=2"]
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    ref_dir.mkdir()
    killed_dir.mkdir()
    ref = swv(*args, cwd=ref_dir)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen([sys.executable, "-m", "swv.cli", *args], cwd=killed_dir, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = killed_dir / "run" / "alignment" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts / "step-0000015").is_dir():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ckpts / "step-0000015").is_dir(), "the run never reached step 15"
    assert not (killed_dir / "run" / "alignment" / "export").exists(), "killed too late"
    res = swv(*args, cwd=killed_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming stage alignment from" in res.stdout
    a, b = _final_alignment(ref_dir), _final_alignment(killed_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_mixture_probabilities() -> None:
    sizes = [900, 90, 10]
    p1 = mixture_probabilities(sizes, 1.0)
    assert np.allclose(p1, [0.9, 0.09, 0.01])
    p_big = mixture_probabilities(sizes, 1e6)
    assert np.allclose(p_big, [1 / 3] * 3, atol=1e-4)
    p5 = mixture_probabilities(sizes, 5.0)
    raw = np.array([0.9, 0.09, 0.01]) ** 0.2
    assert np.allclose(p5, raw / raw.sum())
    with pytest.raises(ValueError):
        mixture_probabilities([3, 0], 1.0)


def test_sampler_follows_mixture_sharding_and_resume(memory_rows) -> None:
    rows = memory_rows([800, 200], [1.0] * 1000)
    s = MixtureSampler(rows, 10, temperature=1.0, temperature_step=100.0, seed=3)
    epoch0 = [i for b in s.epoch_batches(0) for i in b]
    epoch1 = [i for b in s.epoch_batches(1) for i in b]
    assert len(epoch0) == 1000
    assert abs(np.mean(np.array(epoch0) < 800) - 0.8) < 0.05  # T=1: proportional to size
    assert abs(np.mean(np.array(epoch1) < 800) - 0.5) < 0.06  # T=101: close to uniform over tasks
    r0 = MixtureSampler(rows, 10, seed=3, rank=0, world_size=2)
    r1 = MixtureSampler(rows, 10, seed=3, rank=1, world_size=2)
    it0, it1 = iter(r0), iter(r1)
    b0, b1 = [next(it0) for _ in range(3)], [next(it1) for _ in range(3)]
    full = s.epoch_batches(0)  # the global batches: each process takes half of each
    assert b0 == [full[0][:5], full[1][:5], full[2][:5]] and b1 == [full[0][5:], full[1][5:], full[2][5:]]
    state = r0.state_dict()
    r0b = MixtureSampler(rows, 10, seed=3, rank=0, world_size=2)
    r0b.load_state_dict(state)
    assert next(iter(r0b)) == next(it0)


def test_bucketing_respects_frame_budget(memory_rows) -> None:
    durations = list(np.linspace(1, 10, 100))
    s = MixtureSampler(memory_rows([100], durations), 16, max_frames_per_batch=3000, frame_rate=100, seed=0)
    for batch in s.epoch_batches(0):
        longest = max(durations[i] for i in batch)
        assert len(batch) <= 16 and (len(batch) == 1 or longest * 100 * len(batch) <= 3000)
        assert max(durations[i] for i in batch) - min(durations[i] for i in batch) < 5  # similar lengths together


def _recipe_with(tmp_path: Path, manifest_lines: list[str], on_error: str = "error"):
    from swv.assets import asset_path

    audio = asset_path("tiny_speech/audio/train-000.flac")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(line.replace("AUDIO", str(audio)) for line in manifest_lines) + "\n")
    return load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", f"data.datasets.asr.manifest={manifest}",
                                f"data.datasets.asr.on_error={on_error}", "stages.0.max_steps=2", "stages.0.batch_size=4"],
                       default_registry()), manifest


GOOD = '{"audio": "AUDIO", "text": "hello there"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"audio": "AUDIO", "text": ', "m.jsonl:2: invalid JSON"),
        ('{"audio": "missing.wav", "text": "x"}', "m.jsonl:2: audio file not found"),
        ('{"audio": "AUDIO"}', "m.jsonl:2: needs a target"),
        ('{"audio": "AUDIO", "text": "x", "tags": [1]}', "m.jsonl:2: field 'tags' must be a list of tokens"),
    ],
)
def test_bad_manifest_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    from swv.train.train_recipe import train

    loaded, _ = _recipe_with(tmp_path, [GOOD, line])
    with pytest.raises(InputError, match=message):
        train(loaded, stage="alignment")


def test_unreadable_audio_error_or_skip(tmp_path: Path) -> None:
    from swv.train.train_recipe import train

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really audio")
    lines = [GOOD, GOOD, f'{{"audio": "{bad}", "text": "x"}}', GOOD]
    loaded, _ = _recipe_with(tmp_path, lines)
    with pytest.raises(InputError, match=r"m.jsonl:3: .*bad.wav: not a readable audio file"):
        train(loaded, stage="alignment")
    loaded, _ = _recipe_with(tmp_path, lines + [GOOD], on_error="skip")
    loaded.recipe.output_dir = str(tmp_path / "run2")
    train(loaded, stage="alignment")
    assert (tmp_path / "run2" / "alignment" / "export" / "swv_config.json").is_file()


def test_manifest_tags_become_special_tokens_of_every_stage(tmp_path: Path) -> None:
    """Tags that records carry (as ``swv data sound-insert`` writes them) are added to the
    tokenizer before the first stage, exported, and required of a model a stage starts from."""
    from swv.model.speechlm import SpeechLM
    from swv.train.train_recipe import train

    tagged = '{"audio": "AUDIO", "text": "hello <cough> there", "tags": ["<cough>"]}'
    loaded, manifest = _recipe_with(tmp_path, [GOOD, tagged, GOOD, tagged])
    export = train(loaded, stage="alignment")[0]
    model = SpeechLM.from_pretrained(export)
    assert model.backbone.config.special_tokens == ["<cough>"]
    ids = model.tokenizer("hello <cough> there", add_special_tokens=False)["input_ids"]
    assert model.backbone.special_token_ids[0] in ids
    assert model.adapters["alignment"].ctc_head.out_features == model.backbone.info().vocab_size
    # a later stage that brings a new tag cannot start from this export
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[1].replace("<cough>", "<laugh>")]) + "\n")
    loaded2 = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", f"data.datasets.asr.manifest={manifest}",
                                   "stages.1.max_steps=1", "stages.1.batch_size=2"], default_registry())
    with pytest.raises(UsageError, match=r"lacks the tag\(s\) <laugh>"):
        train(loaded2, from_stage="shrinking")


def test_non_finite_losses_stop_the_stage(tmp_path: Path, monkeypatch) -> None:
    from swv.model.speechlm import SpeechLM, SpeechLMOutput
    from swv.train.train_recipe import train

    def nan_forward(self, **kwargs):
        loss = sum(p.sum() for p in self.adapters.parameters()) * float("nan")
        return SpeechLMOutput(loss=loss, ctc_loss=loss)

    monkeypatch.setattr(SpeechLM, "forward", nan_forward)
    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", "stages.0.max_bad_steps=3", "stages.0.batch_size=2"], default_registry())
    with pytest.raises(SwvError, match="3 non-finite losses in a row at step 1"):
        train(loaded, stage="alignment")


def test_trainable_pattern_must_match(tmp_path: Path) -> None:
    from swv.train.train_recipe import train

    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", "stages.0.trainable=[adapters.alignmnt]"], default_registry())
    with pytest.raises(UsageError, match="'adapters.alignmnt' matches no trainable parameter"):
        train(loaded, stage="alignment")
    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run2'}", "stages.0.trainable=[encoder]"], default_registry())
    with pytest.raises(UsageError, match="would train the encoder, but model.encoder.frozen is true"):
        train(loaded, stage="alignment")


def test_tensorboard_tracker_gets_the_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = swv("train", "--recipe", "tiny", "output_dir=run", "trackers=[tensorboard]", "--stage", "alignment",
              "stages.0.max_steps=4", "stages.0.log_every=2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "alignment/ctc_loss" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("alignment/ctc_loss")] == [2, 4]


def test_hf_dataset_source(tmp_path: Path) -> None:
    import datasets

    from swv.assets import asset_path
    from swv.train.train_recipe import train

    rows = [json.loads(line) for line in asset_path("tiny_speech/train_asr.jsonl").read_text().splitlines()[:8]]
    base = asset_path("tiny_speech")
    ds = datasets.Dataset.from_list([{"audio": str(base / r["audio"]), "text": r["text"]} for r in rows])
    ds.save_to_disk(str(tmp_path / "hf"))
    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", "data.datasets.asr.manifest=null",
                                  f"data.datasets.asr.hf_dataset={tmp_path / 'hf'}", "stages.0.max_steps=2",
                                  "stages.0.data.eval_datasets=[]", "stages.0.batch_size=4"],
                         default_registry())
    train(loaded, stage="alignment")
    assert (tmp_path / "run" / "alignment" / "export" / "swv_config.json").is_file()


def test_spec_augment_masks_within_valid_frames_only() -> None:
    from swv.data.collate import SpecAugment
    from swv.recipes.schema import SpecAugmentSettings

    torch.manual_seed(0)
    aug = SpecAugment(SpecAugmentSettings(freq_mask_param=10, time_mask_param=20, num_freq_masks=2, num_time_masks=2), time_axis=-1)
    feats = torch.ones(2, 80, 300)
    lengths = torch.tensor([300, 120])
    out = aug(feats, lengths)
    assert torch.equal(out[1, :, 120:], feats[1, :, 120:])  # padding untouched
    assert (out[0] == 0).any() and (out[1, :, :120] == 0).any()
    assert torch.equal(feats, torch.ones(2, 80, 300))  # input not modified in place
    seq_first = SpecAugment(SpecAugmentSettings(time_mask_param=20), time_axis=1)
    out2 = seq_first(torch.ones(1, 200, 160), torch.tensor([100]))
    assert torch.equal(out2[0, 100:], torch.ones(100, 160)) and (out2[0, :100] == 0).any()


def test_recipe_model_settings_an_export_does_not_use_are_named(tiny_run: Path) -> None:
    """A stage that starts from an export trains the model as saved; the recipe's model settings
    that differ from the export's are named (nothing is named for the run's own exports)."""
    from swv.model.speechlm import SpeechLM
    from swv.train.runner import ignored_model_settings

    saved = SpeechLM.from_pretrained(tiny_run / "alignment" / "export").config.to_dict()
    same = load_recipe("tiny", ["output_dir=run", *FAST], default_registry())
    assert ignored_model_settings(saved, same.model_components) == []
    other = load_recipe("tiny", ["output_dir=run", "model.adapters.shrinking.posterior_temperature=2.0",
                                 "model.backbone.attn_implementation=eager"], default_registry())
    assert ignored_model_settings(saved, other.model_components) == [
        "model.adapters[1].posterior_temperature is 2.0, the export's 1.0"]
    res = swv("train", "--recipe", "tiny", "output_dir=run2", *FAST, "--stage", "shrinking", "stages.1.max_steps=1",
              f"stages.1.init_from={tiny_run / 'alignment' / 'export'}", "model.adapters.shrinking.posterior_temperature=2.0",
              cwd=tiny_run.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    assert ("warning: stage shrinking starts from " in res.stdout
            and "the recipe's model.adapters[1].posterior_temperature is 2.0, the export's 1.0" in res.stdout), res.stdout
