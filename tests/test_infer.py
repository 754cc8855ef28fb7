"""Inference: the Pipeline API (paths, bytes, arrays, batches, stats, streaming), long-audio
windowing, and the `swv infer` command (files, stdin, manifests with bad rows, resuming)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from swv.core.errors import InputError, UsageError
from swv.infer.pipeline import GenerationSettings, Pipeline
from swv.model.speechlm import SpeechLM
from swv.model.stopping import cut_at_stop
from swv.nn.windowing import encode_windowed, join_windows, split_into_windows

SR = 16000


def noise(seconds: float, seed: int, rate: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(rate * seconds)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(save_tiny_model) -> Path:
    return save_tiny_model("infer_model")


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> Pipeline:
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """WAV/FLAC files: 16 kHz mono, 8 kHz mono, 16 kHz stereo FLAC."""
    root = tmp_path_factory.mktemp("clips")
    files = {"a": root / "a.wav", "b": root / "b.wav", "c": root / "c.flac"}
    sf.write(files["a"], noise(1.0, 1), SR)
    sf.write(files["b"], noise(0.7, 2, 8000), 8000)
    sf.write(files["c"], np.stack([noise(0.5, 3), noise(0.5, 4)], axis=1), SR)
    return files


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    files = {
        "missing": root / "missing.wav",
        "text": root / "notes.wav",
        "empty": root / "empty.wav",
        "nan": root / "nan.wav",
        "header": root / "header.wav",
    }
    files["text"].write_text("this is not audio\n")
    files["empty"].write_bytes(b"")
    wav = noise(0.3, 5)
    wav[10] = np.nan
    sf.write(files["nan"], wav, SR, subtype="FLOAT")
    files["header"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00garbage")
    return files


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------
def test_path_bytes_array_and_list_inputs_agree(pipe: Pipeline, clips: dict[str, Path]) -> None:
    import swv

    assert swv.Pipeline is Pipeline
    kw = dict(max_new_tokens=5)
    text = pipe(str(clips["a"]), **kw)
    assert isinstance(text, str)
    assert pipe(clips["a"].read_bytes(), **kw) == text
    samples, rate = sf.read(clips["a"], dtype="float32")
    assert pipe(samples, sample_rate=rate, **kw) == text
    with pytest.raises(UsageError, match="needs its sample rate"):  # never a silent 16 kHz assumption
        pipe(samples, **kw)
    # an 8 kHz array with its sample rate == the 8 kHz file
    wav8, rate = sf.read(clips["b"], dtype="float32")
    assert rate == 8000
    assert pipe(wav8, sample_rate=8000, **kw) == pipe(clips["b"], **kw)
    many = pipe([clips["a"], clips["b"], clips["c"]], **kw)
    assert isinstance(many, list) and len(many) == 3 and many[0] == text


def test_stats_are_consistent(pipe: Pipeline, clips: dict[str, Path]) -> None:
    results = pipe([clips["a"], clips["b"]], max_new_tokens=4, return_stats=True)
    for result, seconds in zip(results, (1.0, 0.7)):
        s = result.stats
        assert s.audio_seconds == pytest.approx(seconds)
        assert s.num_windows == 1
        # trim mode: 100 feature frames per second, conv stride 2
        assert s.encoder_frames == (int(seconds * SR) // 160 - 1) // 2 + 1
        assert 0 < s.audio_tokens <= s.encoder_frames // 2
        assert s.compression_ratio == pytest.approx(s.audio_tokens / s.encoder_frames)
        assert 1 <= s.new_tokens <= 4
        assert 0 < s.time_to_first_token <= s.total_seconds
        assert s.tokens_per_second == pytest.approx(s.new_tokens / s.total_seconds)
        assert set(s.as_dict()) >= {"audio_seconds", "encoder_frames", "audio_tokens", "compression_ratio",
                                    "time_to_first_token", "tokens_per_second"}


def test_batched_generation_equals_one_at_a_time(pipe: Pipeline, clips: dict[str, Path]) -> None:
    audio = [clips["a"], noise(2.3, 7), clips["b"], noise(0.4, 8), clips["c"]]
    prompts = ["Transcribe the speech.", "What is the emotion?", "Say it.", "Who speaks?", "Transcribe the speech."]
    singles = pipe(audio, prompts, sample_rate=SR, batch_size=1, max_new_tokens=6, return_stats=True)
    batched = pipe(audio, prompts, sample_rate=SR, batch_size=3, max_new_tokens=6, return_stats=True)
    assert [r.text for r in batched] == [r.text for r in singles]
    assert [r.stats.audio_tokens for r in batched] == [r.stats.audio_tokens for r in singles]
    assert [r.stats.new_tokens for r in batched] == [r.stats.new_tokens for r in singles]


def test_answers_stop_at_the_first_stop_token(pipe: Pipeline) -> None:
    eot = pipe.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in pipe.stop_ids.tolist()
    new = torch.tensor([[5, 6, eot, 4, 4], [7, 8, 9, 10, 11], [eot, 4, 4, 4, 4]])
    kept, generated = cut_at_stop(new, torch.tensor([eot]))
    assert kept == [[5, 6], [7, 8, 9, 10, 11], []]
    assert generated == [3, 5, 1]


def test_stream_yields_the_same_answer(pipe: Pipeline, clips: dict[str, Path]) -> None:
    stream = pipe.stream(clips["a"], "Transcribe the speech.", max_new_tokens=8)
    pieces = list(stream)
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces).strip() == stream.text == pipe(clips["a"], max_new_tokens=8)
    assert stream.stats is not None and stream.stats.encoder_frames == 50
    assert stream.stats.compression_ratio == pytest.approx(stream.stats.audio_tokens / 50)
    with pytest.raises(UsageError, match="only once"):
        list(stream)
    # leaving early stops the background generation instead of hanging
    early = pipe.stream(clips["a"], max_new_tokens=50)
    for _ in early:
        break
    assert early.text is None


def test_stream_reraises_generation_errors(pipe: Pipeline, clips: dict[str, Path], monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipe, "generate_prepared", boom)
    with pytest.raises(RuntimeError, match="boom"):
        list(pipe.stream(clips["a"]))


def test_sampling_with_a_seed_is_reproducible(pipe: Pipeline, clips: dict[str, Path]) -> None:
    kw = dict(do_sample=True, temperature=1.5, top_p=0.95, seed=3, max_new_tokens=8)
    assert pipe(clips["a"], **kw) == pipe(clips["a"], **kw)


def test_bad_api_inputs(pipe: Pipeline, clips: dict[str, Path], bad_files: dict[str, Path]) -> None:
    for key, match in [("missing", "not found"), ("text", "not a readable audio"), ("empty", "empty"),
                       ("nan", "NaN"), ("header", "not a readable audio")]:
        with pytest.raises(InputError, match=match) as info:
            pipe(bad_files[key])
        assert str(bad_files[key]) in str(info.value)
    with pytest.raises(InputError, match="NaN"):
        pipe(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(InputError, match="zero samples"):
        pipe(np.zeros(0, dtype=np.float32))
    with pytest.raises(InputError, match="1-D"):
        pipe(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(InputError, match="empty"):
        pipe(b"")
    with pytest.raises(UsageError, match="prompt"):
        pipe([clips["a"], clips["b"]], ["one"])
    with pytest.raises(UsageError, match="max_new_tokens"):
        pipe(clips["a"], max_new_tokens=0)
    with pytest.raises(UsageError, match="top_p"):
        pipe(clips["a"], top_p=0.0)
    with pytest.raises(UsageError, match="temperature"):
        GenerationSettings(temperature=0.0)
    with pytest.raises(UsageError, match="batch_size"):
        pipe([clips["a"]], batch_size=0)


def test_dtype_device_and_model_dir(model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    bf16 = Pipeline.from_pretrained(model_dir, dtype="bfloat16", system_prompt="")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.system_prompt == ""
    assert isinstance(bf16(clips["a"], max_new_tokens=3), str)
    with pytest.raises(UsageError, match="dtype"):
        Pipeline.from_pretrained(model_dir, dtype="int3")
    with pytest.raises(UsageError, match="device"):
        Pipeline.from_pretrained(model_dir, device="warp-drive")
    with pytest.raises(UsageError, match="cuda:99"):
        Pipeline.from_pretrained(model_dir, device="cuda:99")
    with pytest.raises(InputError, match="not found"):
        Pipeline.from_pretrained(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# Long audio
# ---------------------------------------------------------------------------------------------
def test_join_windows_packs_valid_frames_in_order() -> None:
    embeds = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3, 1)  # 4 windows, T=3, D=1
    lengths = torch.tensor([3, 1, 2, 3])
    owners = torch.tensor([0, 0, 1, 1])
    joined, joined_lengths = join_windows(embeds, lengths, owners, 2)
    assert joined_lengths.tolist() == [4, 5]
    assert joined[0, :4, 0].tolist() == [0, 1, 2, 3]
    assert joined[1, :5, 0].tolist() == [6, 7, 9, 10, 11]
    windows, owners = split_into_windows([np.zeros(7), np.zeros(3)], 3)
    assert [len(w) for w in windows] == [3, 3, 1, 3] and owners.tolist() == [0, 0, 0, 1]


def test_70s_clip_is_windowed_not_truncated(pipe: Pipeline) -> None:
    model = pipe.model
    assert pipe.window_seconds == 30.0 and model.audio_window_samples == 30 * SR
    long = noise(70.0, 9)
    with torch.inference_mode():
        windowed = encode_windowed(model.encoder, [long])
        chunked = encode_windowed(model.encoder, [long], window_batch_size=1)
        parts = [model.encoder(*model.encoder.extract_features([long[i : i + 30 * SR]]))
                 for i in range(0, len(long), 30 * SR)]
    window_lengths = [int(p.lengths[0]) for p in parts]
    assert window_lengths == [1500, 1500, 500]
    assert windowed.num_windows.tolist() == [3]
    assert windowed.state.lengths.tolist() == [sum(window_lengths)]
    expected = torch.cat([p.embeds[0, :n] for p, n in zip(parts, window_lengths)])
    torch.testing.assert_close(windowed.state.embeds[0], expected)
    torch.testing.assert_close(chunked.state.embeds, windowed.state.embeds)

    result = pipe(long, sample_rate=SR, max_new_tokens=2, return_stats=True)
    assert result.stats.num_windows == 3 and result.stats.encoder_frames == 3500
    assert result.stats.audio_seconds == pytest.approx(70.0)
    with pytest.raises(InputError, match="exceeds the maximum duration of 60 s"):
        pipe(long, sample_rate=SR, max_duration=60)


def test_pad_to_30s_windows_count_all_frames(model_config_factory) -> None:
    model = SpeechLM(model_config_factory(mode="pad_to_30s")).eval()
    with torch.inference_mode():
        windowed = encode_windowed(model.encoder, [noise(70.0, 10), noise(3.0, 11)])
    assert windowed.state.lengths.tolist() == [4500, 1500]
    assert windowed.num_windows.tolist() == [3, 1]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def cli(infer_eval_cli):
    """``run(args) -> (exit_code, stdout, stderr)`` through swv's real ``main`` with the commands
    mounted the way cli/main.py mounts them (conftest's ``infer_eval_cli``)."""
    return infer_eval_cli


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_cli_single_file_streams_the_answer(cli, pipe: Pipeline, clips: dict[str, Path], model_dir: Path) -> None:
    code, out, err = cli(["infer", model_dir, clips["a"], "--max-new-tokens", 6, "--stats"])
    assert code == 0, err
    assert out == pipe(clips["a"], max_new_tokens=6) + "\n"
    assert "stats: audio 1.00 s (1 window(s)), encoder frames 50, audio tokens" in err
    assert "Traceback" not in err


def test_cli_generation_options(cli, monkeypatch, pipe: Pipeline, clips: dict[str, Path], model_dir: Path) -> None:
    from swv.infer import batch

    loaded: list[Pipeline] = []
    original = batch.load_pipeline
    monkeypatch.setattr(batch, "load_pipeline", lambda *a: loaded.append(original(*a)) or loaded[-1])
    args = ["infer", model_dir, clips["a"], "--max-new-tokens", 8, "--do-sample", "--temperature", 1.5,
            "--top-p", 0.9, "--seed", 4, "--system", "Be brief.", "--device", "cpu", "--dtype", "bfloat16"]
    code, out, err = cli(args)
    assert code == 0, err
    assert loaded[0].system_prompt == "Be brief." and loaded[0].processor.prompts.system_prompt == "Be brief."
    assert next(loaded[0].model.parameters()).dtype == torch.bfloat16
    assert out == loaded[0](clips["a"], do_sample=True, temperature=1.5, top_p=0.9, seed=4, max_new_tokens=8) + "\n"
    assert cli(args)[1] == out  # same seed, same sample
    code, greedy, err = cli(["infer", model_dir, clips["a"], "--max-new-tokens", 8, "--greedy"])
    assert code == 0 and greedy == pipe(clips["a"], max_new_tokens=8) + "\n"


def test_cli_several_files_one_line_each(cli, pipe: Pipeline, clips: dict[str, Path], model_dir: Path,
                                         bad_files: dict[str, Path]) -> None:
    files = [clips["a"], clips["b"], clips["c"]]
    code, out, err = cli(["infer", model_dir, *files, "--prompt", "Say it.", "--max-new-tokens", 5,
                          "--batch-size", 2])
    assert code == 0, err
    expected = pipe(files, "Say it.", max_new_tokens=5)
    assert out.splitlines() == [f"{f}\t{' '.join(t.splitlines())}" for f, t in zip(files, expected)]
    # a bad file among several: reported, the others still answered, exit code 1
    code, out, err = cli(["infer", model_dir, clips["a"], bad_files["text"], "--max-new-tokens", 5])
    assert code == 1
    assert len(out.splitlines()) == 1 and out.startswith(f"{clips['a']}\t")
    assert len(error_lines(err)) == 1 and str(bad_files["text"]) in err


def test_cli_reads_stdin(cli, monkeypatch, pipe: Pipeline, clips: dict[str, Path], model_dir: Path) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(clips["b"].read_bytes())))
    code, out, err = cli(["infer", model_dir, "-", "--max-new-tokens", 6])
    assert code == 0, err
    assert out == pipe(clips["b"], max_new_tokens=6) + "\n"


@pytest.mark.parametrize("case", ["missing", "text", "empty", "nan", "header", "stdin-empty", "too-long"])
def test_cli_bad_single_input_is_one_line(cli, monkeypatch, case: str, model_dir: Path, bad_files: dict[str, Path],
                                          tmp_path: Path) -> None:
    args = ["infer", model_dir]
    if case == "stdin-empty":
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
        args.append("-")
        name = "<stdin>"
    elif case == "too-long":
        path = tmp_path / "long.wav"
        sf.write(path, noise(3.0, 12), SR)
        args += [path, "--max-duration", "2"]
        name = str(path)
    else:
        args.append(bad_files[case])
        name = str(bad_files[case])
    code, out, err = cli(args)
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err


def test_cli_bad_model_dir_is_one_line(cli, model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = cli(["infer", tmp_path / "no-model", clips["a"]])
    assert code != 0 and error_lines(err) == [f"error: {tmp_path / 'no-model'}: model directory not found"]
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "adapters" / "shrinking.safetensors").unlink()
    code, _, err = cli(["infer", broken, clips["a"]])
    assert code != 0 and "Traceback" not in err
    assert len(error_lines(err)) == 1 and str(broken) in err and "shrinking.safetensors" in err
    (broken / "swv_config.json").unlink()
    code, _, err = cli(["infer", broken, clips["a"]])
    assert code != 0 and len(error_lines(err)) == 1 and "swv_config.json" in err


def test_cli_usage_errors(cli, model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(clips["a"])}) + "\n")
    for args, match in [
        ([], "AUDIO"),
        (["--manifest", manifest], "--output"),
        ([clips["a"], "--manifest", manifest, "--output", tmp_path / "o.jsonl"], "not both"),
        ([clips["a"], "--output", tmp_path / "o.jsonl"], "--manifest"),
        ([clips["a"], "--dtype", "int3"], "dtype"),
        ([clips["a"], "--temperature", "0"], "temperature"),
        (["-", "-"], "once"),
    ]:
        code, _, err = cli(["infer", model_dir, *args])
        assert code == 2 and len(error_lines(err)) == 1 and match in err, (args, err)


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_cli_manifest_with_bad_rows(cli, pipe: Pipeline, model_dir: Path, clips: dict[str, Path],
                                    bad_files: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(clips["a"], tmp_path / "a.wav")
    rows = [
        {"id": "good", "audio": "a.wav", "text": "hello there", "language": "en", "task": "asr"},
        {"audio": str(bad_files["missing"]), "text": "x"},
        {"id": "notaudio", "audio": str(bad_files["text"]), "label": "happy", "options": ["happy", "sad"]},
        {"id": "empty", "audio": str(bad_files["empty"])},
        {"id": "nan", "audio": str(bad_files["nan"])},
        {"id": "header", "audio": str(bad_files["header"])},
        {"id": "noaudio", "text": "no audio field"},
        {"id": "own", "audio": str(clips["b"]), "instruction": "What is the emotion?", "response": "calm"},
    ]
    manifest = write_manifest(tmp_path / "test.jsonl", rows)
    out = tmp_path / "run" / "out.jsonl"
    args = ["infer", model_dir, "--manifest", manifest, "--output", out, "--max-new-tokens", 4, "--batch-size", 3,
            "--stats", "--prompt", "Say it."]
    # a missing clip stops the run before the model loads (--on-missing fail, the default)
    code, _, err = cli(args)
    assert code == 1 and error_lines(err) == [
        f"error: 1 of 8 record(s) name an audio file that does not exist (first: test.jsonl:2: {bad_files['missing']}); "
        "fix the paths, or pass --on-missing skip to leave them out (they are counted)"], err
    assert not out.exists()
    code, stdout, err = cli([*args, "--on-missing", "skip"])
    assert code == 1, err
    assert "infer: 1 record(s) without an audio file skipped (--on-missing skip; first: test.jsonl:2: " in err
    assert error_lines(err) == [f"error: {manifest}: 6 of 8 item(s) failed (their 'error' is in {out}); "
                                "rerun the same command to retry them"]
    lines = read_jsonl(out)
    assert [line["id"] for line in lines] == ["good", "test.jsonl:2", "notaudio", "empty", "nan", "header",
                                              "noaudio", "own"]
    by_id = {line["id"]: line for line in lines}
    assert by_id["good"]["prediction"] == pipe(clips["a"], "Say it.", max_new_tokens=4)
    assert by_id["own"]["prediction"] == pipe(clips["b"], "What is the emotion?", max_new_tokens=4)
    assert {k: by_id["good"][k] for k in ("text", "language", "task", "audio")} == {
        "text": "hello there", "language": "en", "task": "asr", "audio": "a.wav"}
    assert by_id["notaudio"]["label"] == "happy" and by_id["notaudio"]["options"] == ["happy", "sad"]
    assert by_id["own"]["response"] == "calm"
    for rid, match in [("test.jsonl:2", "not found"), ("notaudio", "not a readable audio"), ("empty", "empty"),
                       ("nan", "NaN"), ("header", "not a readable audio"), ("noaudio", "'audio'")]:
        assert match in by_id[rid]["error"] and "prediction" not in by_id[rid]
    stats = by_id["good"]["stats"]
    assert stats["compression_ratio"] == pytest.approx(stats["audio_tokens"] / stats["encoder_frames"])
    assert "2 generated, 6 failed" in err


def test_cli_manifest_resumes(cli, monkeypatch, model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    rows = [{"id": f"u{i}", "audio": str(clips["a" if i % 2 else "b"]), "text": f"t{i}"} for i in range(5)]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out.jsonl"
    command = ["infer", model_dir, "--manifest", manifest, "--output", out, "--max-new-tokens", 3]
    code, _, err = cli(command)
    assert code == 0, err
    # as if interrupted: two complete lines (marked, with the run's fingerprint) and half of a third
    full = {line["id"]: line for line in read_jsonl(out)}
    done = [{**full["u0"], "prediction": "PREWRITTEN 0"}, {**full["u3"], "prediction": "PREWRITTEN 3"}]
    out.write_text("".join(json.dumps(d) + "\n" for d in done) + '{"id": "u1", "predi')
    generated: list[str] = []
    original = Pipeline.generate_batch

    def counting(self, waveforms, prompts, settings, tasks=None):
        generated.extend(w.name for w in waveforms)
        return original(self, waveforms, prompts, settings, tasks)

    monkeypatch.setattr(Pipeline, "generate_batch", counting)
    code, _, err = cli([*command, "--batch-size", 2])
    assert code == 0, err
    assert len(generated) == 3  # u1, u2, u4 only
    lines = read_jsonl(out)
    assert lines[:2] == done
    assert sorted(line["id"] for line in lines) == ["u0", "u1", "u2", "u3", "u4"]
    assert all("prediction" in line for line in lines)
    # a finished run generates nothing and does not even load the model
    loads: list[Path] = []
    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a[0])))
    before = out.read_bytes()
    code, _, err = cli(command)
    assert code == 0 and loads == [] and len(generated) == 3 and out.read_bytes() == before
    assert "0 generated, 0 failed, 5 already in out.jsonl" in err


def test_cli_manifest_duplicate_ids_and_bad_json(cli, model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "dup.jsonl", [{"id": "x", "audio": str(clips["a"])}] * 2)
    code, _, err = cli(["infer", model_dir, "--manifest", manifest, "--output", tmp_path / "o.jsonl"])
    assert code != 0 and error_lines(err) == [f"error: {manifest}:2: duplicate id 'x' (first at {manifest}:1)"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"audio": "a.wav"}\n{oops\n')
    code, _, err = cli(["infer", model_dir, "--manifest", broken, "--output", tmp_path / "o.jsonl"])
    assert code != 0 and len(error_lines(err)) == 1 and f"{broken}:2" in err


# ---------------------------------------------------------------------------------------------
# One audio road: a float16 encoder before float32 adapters
# ---------------------------------------------------------------------------------------------
def test_float16_encoder_same_tokens_through_generate_pipeline_infer_and_eval(
    cli, model_config_factory, clips: dict[str, Path], tmp_path: Path
) -> None:
    from swv.core.audio import read_audio
    from swv.infer.pipeline import DEFAULT_PROMPT
    from swv.model.prompts import PromptBuilder
    from swv.model.stopping import cut_at_stop

    config = model_config_factory()
    config.encoder = {**config.encoder, "dtype": "float16"}
    torch.manual_seed(3)
    model_dir = SpeechLM(config).save_pretrained(tmp_path / "fp16")
    model = SpeechLM.from_pretrained(model_dir)
    assert next(model.encoder.parameters()).dtype == torch.float16
    assert next(model.adapters.parameters()).dtype == torch.float32

    # SpeechLM.generate on the waveform: the reference tokens
    wave, rate = read_audio(clips["a"])
    assert rate == model.encoder.sample_rate
    prompt = PromptBuilder(model.tokenizer, model.config.system_prompt, "<audio_patch>").generation_ids(DEFAULT_PROMPT, True)
    ids = torch.tensor([prompt])
    new = model.generate(ids, torch.ones_like(ids), waveforms=[wave], max_new_tokens=8, do_sample=False)
    kept, generated = cut_at_stop(new, torch.tensor(model.stop_token_ids()))
    assert kept[0], "the reference answer is empty: the comparison would prove little"
    expected = model.tokenizer.decode(kept[0], skip_special_tokens=True).strip()

    result = Pipeline(model)(clips["a"], max_new_tokens=8, return_stats=True)
    assert (result.text, result.stats.new_tokens) == (expected, generated[0])

    code, out, err = cli(["infer", model_dir, clips["a"], "--max-new-tokens", 8])
    assert code == 0, err
    assert out == expected + "\n"

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(clips["a"]), "text": "hello"}) + "\n")
    code, out, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "asr", "--max-new-tokens", 8,
                          "--output-dir", tmp_path / "eval"])
    assert code == 0, err
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in predictions] == [expected]
