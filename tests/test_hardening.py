"""Issue 16 (hardening): untrusted model directories, paths that leave the run directory, alias
bombs, file modes, torn metrics, moved runs, bounded memory for long clips, manifest limits,
one-line errors for corrupt weights and unwritable outputs, batch-inference exit codes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from swv.core.errors import InputError, RecipeError, UsageError
from swv.recipes.loader import load_recipe
from swv.registry.plugins import default_registry

SR = 16_000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, noise_writer) -> Path:
    """1.5 seconds (conftest's ``clip`` is one)."""
    return noise_writer(tmp_path_factory.mktemp("clip") / "clip.wav", 1.5)


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def edit_config(model: Path, change) -> None:
    config = json.loads((model / "swv_config.json").read_text())
    change(config)
    (model / "swv_config.json").write_text(json.dumps(config))


# -- 1. a model directory cannot enable remote code ------------------------------------------
EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import LlamaConfig


class EvilConfig(LlamaConfig):
    model_type = "llama"
"""


def plant_remote_code(model: Path, marker: Path) -> None:
    (model / "backbone" / "evil.py").write_text(EVIL.format(marker=str(marker)))
    hf_config = json.loads((model / "backbone" / "config.json").read_text())
    hf_config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (model / "backbone" / "config.json").write_text(json.dumps(hf_config))
    edit_config(model, lambda c: c["backbone"].update(trust_remote_code=True))


def test_model_directory_cannot_enable_remote_code(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    marker = tmp_path / "code-ran"
    plant_remote_code(model, marker)
    code, _, err = cli(["infer", model, clip, "--max-new-tokens", 1])
    line = one_error(code, err)
    assert "swv_config.json: backbone.trust_remote_code" in line and "--trust-remote-code" in line
    assert "evil.py" in line
    assert not marker.exists(), "the model's own code ran without the user's consent"
    # the person running the command may allow it, and is told which files run
    code, _, err = cli(["infer", model, clip, "--max-new-tokens", 1, "--trust-remote-code"])
    assert "Traceback" not in err
    assert any(line.startswith("warning:") and "evil.py" in line for line in err.splitlines()), err
    assert marker.exists()


def test_model_config_paths_stay_inside_the_directory(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    edit_config(model, lambda c: c["backbone"].update(path="../../elsewhere"))
    line = one_error(*cli(["infer", model, clip])[::2])
    assert "swv_config.json: backbone.path" in line and "outside the model directory" in line


# -- 2. stage names and paths stay inside the run directory ----------------------------------
@pytest.mark.parametrize("name", ["/some/dir", "../../x", "a/b", "", "..", ".hidden", "-x"])
def test_stage_names_are_one_path_component(name: str) -> None:
    with pytest.raises(RecipeError, match=r"stages\[0\]\.name: stage name"):
        load_recipe("tiny", [f"stages.0.name={json.dumps(name)}", "output_dir=run"])


def test_stage_directory_symlinked_outside_is_refused(tmp_path: Path) -> None:
    from swv.train.train_recipe import train

    outside = tmp_path / "not-mine"
    (outside / "export").mkdir(parents=True)
    (outside / "export" / "keep.txt").write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "alignment").symlink_to(outside)
    loaded = load_recipe("tiny", [f"output_dir={run}", "stages.0.max_steps=1"], default_registry())
    with pytest.raises(UsageError, match=r"stages\[0\]\.name: alignment would put files outside"):
        train(loaded, stage="alignment")
    assert (outside / "export" / "keep.txt").read_text() == "precious"


# -- 3. YAML alias bombs ------------------------------------------------------------------------
BOMB = """
lol0: &a0 [x, x, x, x, x, x, x, x, x, x]
lol1: &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]
lol2: &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]
lol3: &a3 [*a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2]
lol4: &a4 [*a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3]
lol5: &a5 [*a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4]
lol6: &a6 [*a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5]
"""


def test_alias_bomb_in_a_component_mapping_is_refused(cli, tmp_path: Path, one_error) -> None:
    recipe = tmp_path / "bomb.yaml"
    bomb = "\n".join("  " + line for line in BOMB.strip().splitlines())
    recipe.write_text(f"extends: tiny\nmodel:\n  backbone:\n    random_init:\n      junk:\n    {bomb}\n")
    for command in ("validate", "show"):
        line = one_error(*cli(["recipe", command, recipe])[::2])
        assert f"{recipe.resolve()}: YAML aliases expand to more than" in line


def test_alias_bomb_in_an_override_is_refused(cli, one_error) -> None:
    nested = "{a: &a [x, x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], " \
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], " \
             "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d], f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]}"
    line = one_error(*cli(["recipe", "show", "tiny", f"model.backbone.random_init.junk={nested}"])[::2])
    assert "override 'model.backbone.random_init.junk=" in line and "YAML aliases expand" in line


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "loop.yaml"
    recipe.write_text("extends: tiny\ndescription: &d [1, *d]\n")
    with pytest.raises(RecipeError, match="refers to the mapping or list that contains it"):
        load_recipe(recipe)


# -- 4. written files follow the umask ----------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_exported_files_follow_the_umask(model_config_factory, tmp_path: Path, umask: int) -> None:
    from swv.model.speechlm import SpeechLM

    old = os.umask(umask)
    try:
        SpeechLM(model_config_factory()).save_pretrained(tmp_path / "export", bundle=True)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "export").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


# -- 5. a torn metrics line does not break resuming ---------------------------------------------
def test_torn_metrics_line_is_dropped_and_reported(tmp_path: Path, capsys) -> None:
    from swv.train.runner import MetricsLog

    path = tmp_path / "metrics.jsonl"
    records = [{"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.5}, {"step": 15, "loss": 0.4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 20, "lo')
    log = MetricsLog(path, enabled=True, resume_step=10)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:2]
    assert "metrics.jsonl:4: dropped a torn or invalid metrics record" in capsys.readouterr().err
    log.write({"step": 11, "loss": 0.45})
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 11, "loss": 0.45}


# -- 8. a moved run directory resumes ----------------------------------------------------------
def test_moved_run_directory_resumes(tmp_path: Path, capsys) -> None:
    from swv.train.train_recipe import train

    args = ["stages.0.max_steps=2", "stages.0.batch_size=2", "stages.0.log_every=1"]
    train(load_recipe("tiny", [f"output_dir={tmp_path / 'a'}", *args], default_registry()), stage="alignment")
    shutil.move(tmp_path / "a", tmp_path / "b")
    capsys.readouterr()
    train(load_recipe("tiny", [f"output_dir={tmp_path / 'b'}", *args], default_registry()), stage="alignment")
    assert "stage alignment already done" in capsys.readouterr().out


# -- 10. long clips: attention within windows, a default maximum duration ----------------------
def _chain(model_config_factory):
    from swv.model.speechlm import SpeechLM

    torch.manual_seed(0)
    return SpeechLM(model_config_factory([{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}])).eval()


def test_alignment_and_shrinking_attend_within_encoder_windows(model_config_factory) -> None:
    """Frames of one encoder window do not see the frames of another (memory linear in the
    duration); a clip of one window still attends across all its frames."""
    from swv.nn.state import AudioState

    model = _chain(model_config_factory)
    window = 40  # encoder frames per window
    embeds = torch.randn(1, 3 * window, model.encoder.output_dim)
    lengths = torch.tensor([3 * window - 6])
    changed = embeds.clone()
    changed[:, 2 * window :] += 5.0  # only the third window differs
    align = model.adapters["alignment"]
    outs = [align(AudioState(embeds=e, lengths=lengths, window_frames=window)) for e in (embeds, changed)]
    half = window // 2  # aligned frames per window (stack 2)
    assert torch.allclose(outs[0].embeds[:, : 2 * half], outs[1].embeds[:, : 2 * half], atol=1e-6)
    assert not torch.allclose(outs[0].embeds[:, 2 * half :], outs[1].embeds[:, 2 * half :])
    # without windows the first frames do see the change
    whole = [align(AudioState(embeds=e, lengths=lengths)) for e in (embeds, changed)]
    assert not torch.allclose(whole[0].embeds[:, :half], whole[1].embeds[:, :half])

    shrink = model.adapters["shrinking"]
    state = outs[0].replace(window_frames=half)
    other = state.replace(embeds=state.embeds.clone())
    other.embeds[:, 2 * half :] += 5.0  # frames the first windows' kept frames must not attend to
    a, b = shrink(state), shrink(other)
    kept_before = int(a.keep_mask[:, : 2 * half].sum())
    assert kept_before > 0
    assert torch.allclose(a.embeds[:, :kept_before], b.embeds[:, :kept_before], atol=1e-6)


def test_long_clip_windows_reach_the_adapters(model_config_factory) -> None:
    model = _chain(model_config_factory)
    with torch.inference_mode():
        state = model.encode_audio(waveforms=[noise(65.0)])
    assert state.num_windows.tolist() == [3]
    with torch.inference_mode():
        short = model.encode_audio(waveforms=[noise(5.0)])
    assert short.window_frames is None


def test_default_maximum_duration(model_config_factory) -> None:
    from swv.infer.pipeline import DEFAULT_MAX_DURATION, Pipeline

    pipe = Pipeline(_chain(model_config_factory))
    long = np.zeros(int((DEFAULT_MAX_DURATION + 1) * 8000), dtype=np.float32)
    with pytest.raises(InputError, match=r"exceeds the maximum duration of 600 s \(raise it with --max-duration"):
        pipe.prepare(long, 8000, "long.wav")
    assert pipe.prepare(long, 8000, "long.wav", max_duration=DEFAULT_MAX_DURATION + 5).samples.shape[0] > 0


# -- 11. manifest limits ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"duration": -3}, "field 'duration' must be a positive number of seconds, got -3"),
        ({"duration": float("nan")}, "field 'duration' must be a positive number of seconds, got nan"),
        ({"duration": "long"}, "field 'duration' must be a positive number of seconds, got 'long'"),
        ({"text": "word " * 6000}, "field 'text' has 30000 characters, more than the 20000"),
    ],
)
def test_manifest_durations_and_text_lengths_are_checked(tmp_path: Path, extra: dict, message: str) -> None:
    from swv.assets import asset_path
    from swv.data.sources import load_source
    from swv.recipes.schema import DatasetSpec

    audio = str(asset_path("tiny_speech/audio/train-000.flac"))
    manifest = tmp_path / "m.jsonl"
    rows = [{"audio": audio, "text": "fine"}, {"audio": audio, "text": "bad", **extra}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=f"m.jsonl:2: {message}"):
        load_source("asr", DatasetSpec(manifest=str(manifest)), cache_dir=str(tmp_path / "cache"))


# -- 12. corrupt weights: one line naming the file ----------------------------------------------
@pytest.mark.parametrize("part", ["adapters/alignment.safetensors", "adapter_model.safetensors",
                                  "backbone/model.safetensors", "encoder/model.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_are_one_line(cli, bundled_model: Path, clip: Path, tmp_path: Path, part: str,
                                      damage: str, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    file = model / part
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x07" * 4096, "empty": b""}[damage])
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert f"{file}: not a valid safetensors file" in line


def test_import_soundwave_garbage_weights_is_one_line(cli, tmp_path: Path, one_error) -> None:
    src = tmp_path / "soundwave"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "Soundwave"}))
    (src / "model.safetensors").write_bytes(b"\x00\x01garbage" * 100)
    line = one_error(*cli(["import", "soundwave", src, tmp_path / "out"])[::2])
    assert f"{src / 'model.safetensors'}: not a valid safetensors file" in line


# -- 13. unwritable outputs ----------------------------------------------------------------------
def unwritable_dir() -> Path:
    probe = Path("/sys/swv-hardening-probe")
    try:
        probe.mkdir()
    except OSError:
        return probe / "run"
    probe.rmdir()
    pytest.skip("no read-only location on this machine")


def test_file_or_read_only_output_dir_is_one_line(cli, tmp_path: Path, one_error) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for output_dir, reason in [(afile, "is a file, expected a directory"), (unwritable_dir(), "cannot write there")]:
        line = one_error(*cli(["train", "--recipe", "tiny", f"output_dir={output_dir}", "--stage", "alignment"])[::2])
        assert line.startswith(f"error: output_dir: {output_dir}") and reason in line


def test_unwritable_infer_output_is_one_line(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(clip)}) + "\n")
    target = unwritable_dir() / "out.jsonl"
    line = one_error(*cli(["infer", bundled_model, "--manifest", manifest, "--output", target])[::2])
    assert line.startswith(f"error: {target}: cannot write the predictions here")


# -- 14. a recipe that is not UTF-8 -------------------------------------------------------------
def test_non_utf8_recipe_is_one_line(cli, tmp_path: Path, one_error) -> None:
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("extends: tiny\ndescription: caf\u00e9\n".encode("latin-1"))
    line = one_error(*cli(["recipe", "validate", recipe])[::2])
    assert "latin1.yaml: not UTF-8 text (invalid byte at offset" in line


# -- 15. errors name the file and field ----------------------------------------------------------
def test_model_config_errors_name_the_file_and_field(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    model = copy_model(bundled_model, tmp_path / "model")
    edit_config(model, lambda c: c["backbone"]["lora"].update(r="many"))
    line = one_error(*cli(["infer", model, clip])[::2])
    assert f"{model / 'swv_config.json'}: backbone.lora.r:" in line
    edit_config(model, lambda c: c["adapters"][0].update(name="nope"))
    line = one_error(*cli(["infer", model, clip])[::2])
    assert f"{model / 'swv_config.json'}: adapters[0].name:" in line


def test_empty_output_dir_is_rejected() -> None:
    with pytest.raises(RecipeError, match=r"output_dir: output_dir must name a directory"):
        load_recipe("tiny", ["output_dir=''"])


def test_too_long_training_clip_names_manifest_and_line(tmp_path: Path) -> None:
    from swv.train.train_recipe import train

    long = tmp_path / "long.wav"
    sf.write(long, noise(31.0), SR)
    short = tmp_path / "short.wav"
    sf.write(short, noise(2.0), SR)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(a), "text": "hi"}) + "\n" for a in (short, long)))
    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", f"data.datasets.asr.manifest={manifest}",
                                  "stages.0.max_steps=1", "stages.0.batch_size=2", "data.use_feature_cache=false"],
                         default_registry())
    with pytest.raises(InputError, match=r"m.jsonl:2: .*long.wav: 31.00 s is longer than the encoder's 30 s window"):
        train(loaded, stage="alignment")


# -- 16. batch inference: failed rows exit non-zero and are retried -----------------------------
def test_failed_manifest_rows_are_retried(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    later = tmp_path / "later.wav"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "audio": str(a)}) + "\n" for i, a in (("a", clip), ("b", later))))
    out = tmp_path / "out.jsonl"
    line = one_error(*cli(["infer", bundled_model, "--manifest", manifest, "--output", out, "--max-new-tokens", 2,
                           "--on-missing", "skip"])[::2])
    assert "1 of 2 item(s) failed" in line
    shutil.copy(clip, later)
    code, _, err = cli(["infer", bundled_model, "--manifest", manifest, "--output", out, "--max-new-tokens", 2])
    assert code == 0, err
    assert "1 generated, 0 failed, 1 already in out.jsonl" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == ["a", "b"] and all("prediction" in r for r in lines)


def test_output_equal_to_manifest_is_refused(cli, bundled_model: Path, clip: Path, tmp_path: Path, one_error) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(clip)}) + "\n")
    before = manifest.read_bytes()
    line = one_error(*cli(["infer", bundled_model, "--manifest", manifest, "--output", tmp_path / "." / "m.jsonl"])[::2])
    assert "is the manifest itself" in line and manifest.read_bytes() == before
