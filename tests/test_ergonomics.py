"""Issue 26 (ergonomics): one --on-missing policy for `swv data manifest` and `swv eval`, errors in
the words the user typed (--column, shipped recipe names), DDP's find_unused_parameters decided per
stage, an ETA in training's log lines and data progress bars that end at their real count."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from swv.core.errors import InputError, RecipeError
from swv.core.progress import format_duration
from swv.train.trainable import ChainLink, unreached_modules

SR = 16000


def tone(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    sf.write(path, (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32), SR)
    return path


@pytest.fixture
def librispeech(librispeech_writer):
    """``build(root, missing=...)``: test-clean with two utterances; the second one's FLAC absent
    when ``missing``."""
    return lambda root, *, missing: librispeech_writer(root, (0.5, None if missing else 0.3))


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def model_dir(save_tiny_model) -> Path:
    return save_tiny_model("ergonomics_model")


# -- one policy for a missing clip ---------------------------------------------------------------
MISSING = re.compile(r"error: 1 of 2 (librispeech entries|record\(s\)) name an audio file that does not exist "
                     r"\(first: .*1089-134686-0001\.flac\); fix the paths, or pass --on-missing skip")


def test_manifest_missing_clip_fails_by_default_and_is_counted_under_skip(cli, tmp_path: Path, librispeech) -> None:
    root = librispeech(tmp_path, missing=True)
    out = tmp_path / "ls.jsonl"
    args = ["data", "manifest", root, "--format", "librispeech", "--split", "test-clean", "-o", out]
    code, _, err = cli(args)
    assert code != 0 and len(error_lines(err)) == 1 and MISSING.match(error_lines(err)[0]), err
    assert not out.exists()
    code, text, err = cli([*args, "--on-missing", "skip"])
    assert code == 0, err
    assert "wrote 1 record(s)" in text and "audio file not found: 1" in text and "1089-134686-0001.flac" in text
    code, _, err = cli([*args, "--on-missing", "ignore"])
    assert code != 0 and "ignore" in err and "fail" in err and "skip" in err


def test_eval_missing_clip_fails_by_default_and_counts_as_failed_under_skip(cli, model_dir: Path,
                                                                            tmp_path: Path, librispeech) -> None:
    root = librispeech(tmp_path, missing=True)
    out_dir = tmp_path / "ev"
    args = ["eval", model_dir, "--preset", "librispeech-test-clean", "--data", root, "--output-dir", out_dir]
    code, _, err = cli(args)
    assert code != 0 and len(error_lines(err)) == 1 and MISSING.match(error_lines(err)[0]), err
    assert not (out_dir / "predictions.jsonl").exists()  # stopped before the model ran
    code, out, err = cli([*args, "--on-missing", "skip", "--max-new-tokens", "2"])
    assert code == 0, err
    assert "eval: 1 record(s) without an audio file skipped (--on-missing skip; first: benchmark.jsonl:2: " in err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["num_records"] == 2 and report["num_failed"] == 1 and report["failed_ids"] == ["1089-134686-0001"]
    assert "failed: 1" in out


def test_eval_manifest_missing_clip_and_predictions(cli, tmp_path: Path) -> None:
    """A plain --manifest follows the same policy; scoring --predictions needs no audio."""
    clip = tone(tmp_path / "a.wav", 0.3)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(clip), "text": "hi"}) + "\n"
                        + json.dumps({"id": "b", "audio": "gone.wav", "text": "ho"}) + "\n")
    code, _, err = cli(["eval", tmp_path / "nomodel", "--manifest", manifest, "--task", "asr"])
    assert code != 0 and error_lines(err) == [
        f"error: 1 of 2 record(s) name an audio file that does not exist (first: m.jsonl:2: {tmp_path / 'gone.wav'}); "
        "fix the paths, or pass --on-missing skip to leave them out (they are counted)"]
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "a", "prediction": "hi"}) + "\n" + json.dumps({"id": "b", "prediction": "ho"}) + "\n")
    code, _, err = cli(["eval", tmp_path / "nomodel", "--manifest", manifest, "--task", "asr", "--predictions", preds,
                        "--output-dir", tmp_path / "ev"])
    assert code == 0, err



def test_infer_eval_and_data_commands_print_one_skipped_clips_line(cli, model_dir: Path, tmp_path: Path) -> None:
    """The same manifest with a missing clip under --on-missing skip: infer and eval print the
    same line (their prefix aside), the data commands the same count without the failed items."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(tone(tmp_path / "a.wav", 0.3)), "text": "hi"}) + "\n"
                        + json.dumps({"id": "b", "audio": "gone.wav", "text": "ho"}) + "\n")
    runs = {
        "infer": ["infer", model_dir, "--manifest", manifest, "--output", tmp_path / "out.jsonl", "--max-new-tokens", 2],
        "eval": ["eval", model_dir, "--manifest", manifest, "--task", "asr", "--output-dir", tmp_path / "ev",
                 "--max-new-tokens", 2],
        "data filter": ["data", "filter", manifest, "-o", tmp_path / "f.jsonl", "--no-duration-filter"],
        "data shard": ["data", "shard", manifest, "--out", tmp_path / "shards"],
    }
    lines = {}
    for command, args in runs.items():
        _, _, err = cli([*args, "--on-missing", "skip"])
        found = [line for line in err.splitlines() if "without an audio file skipped" in line]
        assert len(found) == 1 and found[0].startswith(f"{command}: "), (command, err)
        lines[command] = found[0].removeprefix(f"{command}: ")
    want = f"1 record(s) without an audio file skipped (--on-missing skip; first: m.jsonl:2: {tmp_path / 'gone.wav'})"
    assert lines["infer"] == lines["eval"] == f"{want}; they count as failed items"
    assert lines["data filter"] == lines["data shard"] == want


def test_eval_hf_dataset_path_column_follows_on_missing(cli, model_dir: Path, tmp_path: Path) -> None:
    """A dataset whose audio column holds paths, one of them to no file: the default stops before
    the model runs; under skip the row is a counted failed item, as a manifest's would be."""
    import datasets

    clip = tone(tmp_path / "a.wav", 0.3)
    datasets.Dataset.from_dict({"audio": [str(clip), str(tmp_path / "gone.wav")], "text": ["hi", "ho"]}).save_to_disk(
        str(tmp_path / "disk"))
    args = ["eval", model_dir, "--hf-dataset", tmp_path / "disk", "--split", "train", "--task", "asr",
            "--output-dir", tmp_path / "ev"]
    code, _, err = cli(args)
    assert code != 0 and len(error_lines(err)) == 1, err
    assert error_lines(err)[0].startswith("error: 1 of 2 record(s) name an audio file that does not exist (first: dataset.jsonl:2: ")
    assert not (tmp_path / "ev" / "predictions.jsonl").exists()
    code, out, err = cli([*args, "--on-missing", "skip", "--max-new-tokens", "2"])
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["num_records"] == 2 and report["num_failed"] == 1 and report["failed_ids"] == ["train-1"]

# -- errors in the user's words ------------------------------------------------------------------
def _audio_dataset(tmp_path: Path) -> Path:
    import datasets

    def flac(i: int) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, np.zeros(int(SR * (0.3 + 0.1 * i)), np.float32), SR, format="FLAC")
        return buf.getvalue()

    ds = datasets.Dataset.from_dict({"speech": [{"bytes": flac(i), "path": f"c{i}.flac"} for i in range(2)],
                                     "sentence": ["hello", "world"]})
    ds.cast_column("speech", datasets.Audio()).save_to_disk(str(tmp_path / "disk"))
    return tmp_path / "disk"


def test_hf_dataset_errors_name_the_flags(cli, tmp_path: Path) -> None:
    disk = _audio_dataset(tmp_path)
    base = ["eval", tmp_path / "nomodel", "--hf-dataset", disk, "--task", "asr", "--output-dir", tmp_path / "ev"]
    errors = []
    for column, expected in [
        ("text=sentense", "error: --column text=sentense: the dataset has no column 'sentense' (columns: speech, sentence)"),
        ("txt=sentence", "error: --column txt=sentence: unknown field 'txt' (fields: "),
        ("text=speech", "error: --column: column 'speech' is mapped to both 'audio' and 'text'"),
    ]:
        code, _, err = cli([*base, "--column", "audio=speech", "--column", column])
        errors += error_lines(err)
        assert code != 0 and len(error_lines(err)) == 1 and error_lines(err)[0].startswith(expected), err
    assert not any("data.datasets" in line or ".columns" in line for line in errors)


def test_shipped_recipe_errors_name_the_recipe_not_the_install(cli) -> None:
    from swv.recipes.loader import load_recipe, recipe_label, shipped_recipe_dir

    with pytest.raises(RecipeError) as caught:
        load_recipe("tiny", ["stages.0.max_step=10"])
    message = str(caught.value)
    assert message == "recipe tiny: stages[0].max_step: unknown field (from override 'stages.0.max_step=10')"
    assert str(shipped_recipe_dir()) not in message
    code, _, err = cli(["recipe", "show", "tiny", "stages.0.max_step=10"])
    assert code != 0 and error_lines(err) == [f"error: {message}"]
    assert recipe_label("my/own.yaml") == "my/own.yaml"


def test_user_recipe_errors_keep_its_path(tmp_path: Path) -> None:
    from swv.recipes.loader import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("extends: tiny\nseed: [1]\n")
    with pytest.raises(RecipeError, match=f"^{re.escape(str(recipe))}: seed: "):
        load_recipe(recipe)


# -- DDP: find_unused_parameters only when a trainable module can miss its gradient ----------------
ALIGN = ChainLink("alignment", produces_ctc=True)
SHRINK = ChainLink("shrinking")


@pytest.mark.parametrize(("trainable", "chain", "weighted", "backbone", "unreached"), [
    # the paper's three stages: every trainable module reaches a weighted loss
    ({"adapters.alignment"}, [ALIGN, SHRINK], {"ctc"}, False, []),
    ({"adapters.alignment", "adapters.shrinking", "backbone.lora"}, [ALIGN, SHRINK], {"lm", "ctc"}, True, []),
    ({"adapters.shrinking", "backbone.lora", "backbone"}, [ALIGN, SHRINK], {"lm"}, True, []),
    # a CTC-only stage stops the chain at the CTC head: the shrinking adapter never runs
    ({"adapters.alignment", "adapters.shrinking"}, [ALIGN, SHRINK], {"ctc"}, False, ["adapters.shrinking"]),
    # an LM-only stage training the CTC adapter: its CTC head may get no gradient
    ({"adapters.alignment", "backbone.lora"}, [ALIGN, SHRINK], {"lm"}, True, ["adapters.alignment"]),
    # an auxiliary loss reaches the adapters up to its owner, and its owner only when weighted
    ({"adapters.aux"}, [ALIGN, ChainLink("aux", aux_losses=frozenset({"div"}))], {"ctc"}, False, ["adapters.aux"]),
    ({"adapters.aux", "encoder"}, [ALIGN, ChainLink("aux", aux_losses=frozenset({"div"}))], {"ctc", "div"}, False, []),
    ({"encoder", "adapters.shrinking"}, [ALIGN, SHRINK], set(), False, ["adapters.shrinking", "encoder"]),
])
def test_find_unused_parameters_decision(trainable, chain, weighted, backbone, unreached) -> None:
    assert unreached_modules(trainable, chain, weighted, backbone) == unreached


def test_text_only_rows_leave_the_audio_side_without_gradient() -> None:
    """Stage II mixes text-only data: a batch without audio runs neither the encoder nor the adapters
    (found in a two-process run of the tiny recipe), while the backbone always runs."""
    trainable = {"adapters.alignment", "adapters.shrinking", "backbone", "backbone.lora"}
    assert unreached_modules(trainable, [ALIGN, SHRINK], {"lm", "ctc"}, True, text_only_rows=True) == \
        ["adapters.alignment", "adapters.shrinking"]
    assert unreached_modules({"backbone.lora"}, [ALIGN, SHRINK], {"lm"}, True, text_only_rows=True) == []


@pytest.mark.parametrize("recipe", ["tiny", "soundwave", "demo"])
def test_shipped_recipes_reach_every_trainable_module_from_speech_batches(recipe: str) -> None:
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.stages import recipe_stages

    registry = default_registry()
    loaded = load_recipe(recipe, [], registry)
    chain = []
    for ref in loaded.model_components.adapters:
        cls = registry.get("adapter", ref.name).load_class()
        chain.append(ChainLink(ref.name, cls.produces_ctc, frozenset(cls.aux_loss_names)))
    groups = {"lora": "backbone.lora"}
    for stage in recipe_stages(loaded, registry):
        trainable = {groups.get(p, p) for p in stage.settings.trainable}
        weighted = {name for name, w in stage.settings.losses.items() if w > 0}
        assert unreached_modules(trainable, chain, weighted, stage.run_backbone) == [], stage.name


# -- progress: ETA in training's log lines, data bars that end at their count ----------------------
def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.4, 8, 75, 3725, -1)] == ["0s", "8s", "1m15s", "1h02m", "0s"]


def test_training_log_line_has_elapsed_and_eta(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    env["SWV_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    res = subprocess.run([sys.executable, "-m", "swv.cli", "train", "--recipe", "tiny", "output_dir=run", "--stage",
                          "alignment", "stages.0.max_steps=4", "stages.0.log_every=2"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("[alignment] step ")]
    assert len(lines) == 2, res.stdout
    assert re.fullmatch(r"\[alignment\] step 2/4 .*ctc_loss=\S+ .* elapsed=\S+ eta=\S+", lines[0]), lines[0]
    assert re.fullmatch(r"\[alignment\] step 4/4 .* elapsed=\S+ eta=0s", lines[1]), lines[1]


def _last_bar(err: str) -> str:
    return [part for part in err.replace("\n", "\r").split("\r") if part.strip()][-1]


def test_data_bars_end_at_their_count(tmp_path: Path, capsys, librispeech) -> None:
    from swv.data.shards import write_shards
    from swv.dataprep.corpora import CorpusOptions, build_corpus_manifest

    root = librispeech(tmp_path, missing=False)
    out = tmp_path / "m.jsonl"
    capsys.readouterr()
    build_corpus_manifest(root, out, "librispeech", CorpusOptions(split="test-clean"))
    assert re.match(r"manifest: 2rec \[", _last_bar(capsys.readouterr().err))
    write_shards(out, tmp_path / "shards", clips_per_shard=1)
    assert re.match(r"shard: 100%\|.*\| 2/2 \[", _last_bar(capsys.readouterr().err))


def test_missing_audio_policy_is_checked() -> None:
    from swv.core.errors import UsageError
    from swv.data.missing_audio import MissingAudio

    with pytest.raises(UsageError, match="--on-missing: expected one of fail, skip, got 'drop'"):
        MissingAudio("drop")
    missing = MissingAudio("skip")
    assert not missing.check(Path("/no/such/clip.wav"), "t.tsv:2") and missing.check(Path(__file__), "t.tsv:3")
    missing.enforce(2, "rows")  # skip: counted, not raised
    assert missing.summary("row(s)") == "1 row(s) without an audio file skipped (--on-missing skip; first: t.tsv:2: " \
                                        "/no/such/clip.wav)"
    with pytest.raises(InputError, match=r"^1 of 2 rows name an audio file"):
        MissingAudio("fail", ["t.tsv:2: /no/such/clip.wav"]).enforce(2, "rows")
