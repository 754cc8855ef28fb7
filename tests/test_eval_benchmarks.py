"""`swv eval --preset` on the paper's headline benchmarks, each read from tiny generated files in
its own released layout (AIR-Bench, MELD, MuST-C, MMAU), and the LLM judge of open answers
against a fake OpenAI-compatible endpoint served in-process on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from swv.core.errors import ServiceError
from swv.eval.judge import JUDGE_RUBRIC, parse_score
from swv.eval.presets import get_preset

SR = 16000


def tone(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    sf.write(path, (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32), SR)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def cli(eval_cli):
    return eval_cli


# --- AIR-Bench foundation ------------------------------------------------------------------------

def airbench_foundation(root: Path) -> Path:
    """Three speech items of two tasks, one sound item (not a speech task), as released."""
    items = [
        {"path": "a1.wav", "question": "What is the gender of the speaker?", "choice_a": "male",
         "choice_b": "female", "answer_gt": "female", "task_name": "Speaker_Gender_Recognition",
         "dataset_name": "meld", "uniq_id": 1},
        {"path": "a2.wav", "question": "What is the gender of the speaker?", "choice_a": "male",
         "choice_b": "female", "answer_gt": "male", "task_name": "Speaker_Gender_Recognition",
         "dataset_name": "meld", "uniq_id": 2},
        {"path": "b1.wav", "question": "How many speakers are there?", "choice_a": "1", "choice_b": "2",
         "choice_c": "3", "choice_d": "4", "answer_gt": "3", "task_name": "Speaker_Number_Verification",
         "dataset_name": "voxceleb1", "uniq_id": 3},
        {"path": "c1.wav", "question": "Which scene?", "choice_a": "park", "choice_b": "bus", "choice_c": "",
         "choice_d": None, "answer_gt": "bus", "task_name": "Acoustic_Scene_Classification",
         "dataset_name": "TUT2017", "uniq_id": 4},
    ]
    foundation = root / "AIR-Bench" / "Foundation"
    for item in items:
        tone(foundation / f"{item['task_name']}_{item['dataset_name']}" / item["path"], 0.3)
    (foundation / "Foundation_meta.json").write_text(json.dumps(items))
    return root / "AIR-Bench"


def test_airbench_foundation_speech_macro_accuracy_beside_the_paper(cli, tmp_path: Path) -> None:
    data = airbench_foundation(tmp_path)
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "Speaker_Gender_Recognition_meld_1", "prediction": "The one answer you should pick is B. female."},
        {"id": "Speaker_Gender_Recognition_meld_2", "prediction": "B"},
        {"id": "Speaker_Number_Verification_voxceleb1_3", "prediction": "C. 3"},
    ])
    out_dir = tmp_path / "air"
    code, out, err = cli([tmp_path / "m", "--preset", "airbench-foundation-speech", "--data", data,
                          "--predictions", preds, "--output-dir", out_dir])
    assert code == 0, err
    rows = read_jsonl(out_dir / "benchmark.jsonl")
    assert [r["id"] for r in rows] == ["Speaker_Gender_Recognition_meld_1", "Speaker_Gender_Recognition_meld_2",
                                       "Speaker_Number_Verification_voxceleb1_3"]  # the sound task is not scored
    assert rows[2]["instruction"] == "How many speakers are there? Pick one answer from: A. 1 B. 2 C. 3 D. 4."
    assert rows[0]["options"] == ["male", "female"]
    report = json.loads((out_dir / "report.json").read_text())
    assert report["per_task"]["Speaker_Gender_Recognition"]["accuracy"] == pytest.approx(0.5)
    assert report["per_task"]["Speaker_Number_Verification"]["accuracy"] == pytest.approx(1.0)
    assert report["metrics"]["macro_accuracy"] == pytest.approx(0.75)  # mean of the tasks, as Table 6 averages
    assert report["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert report["benchmark"]["paper"] == {"table": "Table 6", "soundwave": 0.755}
    assert "benchmark: AIR-Bench foundation, speech tasks   macro accuracy: 75.00%   " \
           "(paper Table 6, Soundwave: 75.50%)" in out
    assert "macro accuracy (mean over 2 tasks): 75.00%" in out


def test_airbench_foundation_sound_keeps_only_the_sound_tasks(cli, tmp_path: Path) -> None:
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "Acoustic_Scene_Classification_TUT2017_4", "prediction": "B"}])
    out_dir = tmp_path / "sound"
    code, out, err = cli([tmp_path / "m", "--preset", "airbench-foundation-sound", "--data", airbench_foundation(tmp_path),
                          "--predictions", preds, "--output-dir", out_dir])
    assert code == 0, err
    (row,) = read_jsonl(out_dir / "benchmark.jsonl")
    assert row["options"] == ["park", "bus"]  # empty choice_c / choice_d are no options
    assert row["instruction"] == "Which scene? Pick one answer from: A. park B. bus."
    assert "macro accuracy: 100.00%   (paper Table 16, Soundwave: 62.10%)" in out


def test_airbench_foundation_runs_the_model_with_each_items_question(cli, save_tiny_model, tmp_path: Path,
                                                                     generated_prompts: list[str]) -> None:
    model_dir = save_tiny_model("model")
    code, _, err = cli([model_dir, "--preset", "airbench-foundation-speech", "--data", airbench_foundation(tmp_path),
                        "--output-dir", tmp_path / "run", "--max-new-tokens", "2"])
    assert code == 0, err
    assert sorted(generated_prompts) == sorted([
        "What is the gender of the speaker? Pick one answer from: A. male B. female.",
        "What is the gender of the speaker? Pick one answer from: A. male B. female.",
        "How many speakers are there? Pick one answer from: A. 1 B. 2 C. 3 D. 4.",
    ])


def test_airbench_foundation_bad_meta_is_one_line(cli, tmp_path: Path) -> None:
    foundation = tmp_path / "Foundation"
    foundation.mkdir()
    (foundation / "Foundation_meta.json").write_text(json.dumps([
        {"path": "a.wav", "question": "Q?", "choice_a": "x", "choice_b": "y", "answer_gt": "z",
         "task_name": "Speech_Grounding", "dataset_name": "librispeech", "uniq_id": 1}]))
    code, _, err = cli([tmp_path / "m", "--preset", "airbench-foundation-speech", "--data", tmp_path,
                        "--predictions", tmp_path / "p.jsonl"])
    assert code != 0 and "Traceback" not in err
    assert "item #0: answer_gt 'z' is not one of its choices ['x', 'y']" in err


# --- MELD ----------------------------------------------------------------------------------------

def meld(root: Path, suffix: str = ".wav") -> Path:
    raw = root / "MELD.Raw"
    raw.mkdir(parents=True)
    (raw / "test_sent_emo.csv").write_text(
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
        '1,"Oh, my God!",Monica,surprise,positive,0,0,3,19,"00:14:38,127","00:14:40,500"\n'
        "2,I hate this.,Ross,anger,negative,0,1,3,19,\"00:14:41,000\",\"00:14:42,000\"\n"
        "3,Fine.,Rachel,neutral,neutral,3,2,3,19,\"00:14:43,000\",\"00:14:44,000\"\n")
    for stem in ("dia0_utt0", "dia0_utt1", "dia3_utt2"):
        if suffix == ".wav":
            tone(raw / "output_repeated_splits_test" / f"{stem}.wav", 0.3)
        else:
            (raw / "output_repeated_splits_test").mkdir(exist_ok=True)
            (raw / "output_repeated_splits_test" / f"{stem}{suffix}").write_bytes(b"\x00" * 16)
    return raw


def test_meld_preset_accuracy_beside_the_paper(cli, tmp_path: Path) -> None:
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "dia0_utt0", "prediction": "The one answer you should pick is E. surprise."},
        {"id": "dia0_utt1", "prediction": "sadness"},
        {"id": "dia3_utt2", "prediction": "A"},
        {"id": "unrelated", "prediction": "joy"},
    ])
    out_dir = tmp_path / "meld"
    code, out, err = cli([tmp_path / "m", "--preset", "meld", "--data", meld(tmp_path), "--predictions", preds,
                          "--output-dir", out_dir])
    assert code == 0, err
    rows = read_jsonl(out_dir / "benchmark.jsonl")
    assert [(r["id"], r["label"], r["text"]) for r in rows] == [
        ("dia0_utt0", "surprise", "Oh, my God!"), ("dia0_utt1", "anger", "I hate this."), ("dia3_utt2", "neutral", "Fine.")]
    assert rows[0]["instruction"] == ("What is the emotion of the speaker? Pick one answer from: A. neutral B. joy "
                                      "C. sadness D. anger E. surprise F. fear G. disgust.")
    report = json.loads((out_dir / "report.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert "benchmark: MELD (test), emotion   accuracy: 66.67%   (paper Table 5, Soundwave: 63.50%)" in out


def test_meld_mp4_clips_are_one_line_saying_to_extract_the_audio(cli, tmp_path: Path) -> None:
    code, _, err = cli([tmp_path / "m", "--preset", "meld", "--data", meld(tmp_path, ".mp4"),
                        "--predictions", tmp_path / "p.jsonl"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err
    assert "dia0_utt0.mp4: MELD's clips are mp4 videos; extract their audio to dia0_utt0.wav first" in lines[0]


# --- MuST-C --------------------------------------------------------------------------------------

def mustc(root: Path) -> tuple[Path, Path]:
    """en-nl tst-COMMON: two talks, three segments; returns (pair folder, talk wav folder)."""
    pair = root / "MUSTC_v1.0" / "en-nl"
    txt, wav = pair / "data" / "tst-COMMON" / "txt", pair / "data" / "tst-COMMON" / "wav"
    txt.mkdir(parents=True)
    tone(wav / "ted_767.wav", 2.0)
    tone(wav / "ted_768.wav", 1.0)
    (txt / "tst-COMMON.yaml").write_text(
        "- {duration: 0.500000, offset: 0.250000, rw: 1, speaker_id: spk.767, wav: ted_767.wav}\n"
        "- {duration: 0.750000, offset: 1.000000, rw: 1, speaker_id: spk.767, wav: ted_767.wav}\n"
        "- {duration: 0.400000, offset: 0.100000, rw: 1, speaker_id: spk.768, wav: ted_768.wav}\n")
    (txt / "tst-COMMON.en").write_text("Thank you.\nIt is raining today.\nGood morning.\n")
    (txt / "tst-COMMON.nl").write_text("Dank je.\nHet regent vandaag.\nGoedemorgen.\n")
    return pair, wav


def test_mustc_preset_cuts_the_segments_and_scores_bleu(cli, tmp_path: Path) -> None:
    pair, wav = mustc(tmp_path)
    clips = tmp_path / "segments"
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "ted_767_0", "prediction": "Dank je."},
        {"id": "ted_767_1", "prediction": "Het regent vandaag."},
        {"id": "ted_768_0", "prediction": "Goedemorgen."},
    ])
    out_dir = tmp_path / "st"
    code, out, err = cli([tmp_path / "m", "--preset", "mustc-en-nl", "--data", pair, "--clips", clips,
                          "--predictions", preds, "--output-dir", out_dir])
    assert code == 0, err
    rows = read_jsonl(out_dir / "benchmark.jsonl")
    assert [(r["id"], r["text"], r["target_text"]) for r in rows] == [
        ("ted_767_0", "Thank you.", "Dank je."), ("ted_767_1", "It is raining today.", "Het regent vandaag."),
        ("ted_768_0", "Good morning.", "Goedemorgen.")]
    assert {r["instruction"] for r in rows} == {"Translate the speech into Dutch."}
    talk, _ = sf.read(wav / "ted_767.wav", dtype="float32")
    cut, rate = sf.read(out_dir / rows[1]["audio"], dtype="float32")
    assert rate == SR and cut.shape[0] == int(0.75 * SR)
    np.testing.assert_allclose(cut, talk[SR: SR + int(0.75 * SR)], atol=1e-4)  # the span of the talk
    report = json.loads((out_dir / "report.json").read_text())
    assert report["metrics"]["bleu"] == pytest.approx(100.0)
    assert "benchmark: MuST-C En->Nl (tst-COMMON, zero-shot)   BLEU: 100.00   (paper Table 5, Soundwave: 27.00)" in out


def test_mustc_layout_builds_a_training_manifest_and_keeps_cut_segments(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from swv.cli.data import app

    pair, _ = mustc(tmp_path)
    clips, out = tmp_path / "segments", tmp_path / "mustc.jsonl"
    result = CliRunner().invoke(app, ["manifest", str(pair), "--format", "mustc", "--clips", str(clips), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert [(r["id"], r["duration"], r["target_language"], r["speaker"]) for r in rows] == [
        ("ted_767_0", 0.5, "nl", "spk.767"), ("ted_767_1", 0.75, "nl", "spk.767"), ("ted_768_0", 0.4, "nl", "spk.768")]
    cut = clips / "ted_767_0.wav"
    stamp = cut.stat().st_mtime_ns
    result = CliRunner().invoke(app, ["manifest", str(pair), "--format", "mustc", "--clips", str(clips), "-o", str(out)])
    assert result.exit_code == 0 and cut.stat().st_mtime_ns == stamp  # a segment already cut is kept


def test_mustc_needs_clips_and_aligned_texts(cli, tmp_path: Path) -> None:
    pair, _ = mustc(tmp_path)
    code, _, err = cli([tmp_path / "m", "--preset", "mustc-en-nl", "--data", pair, "--predictions", tmp_path / "p"])
    assert code != 0 and "--clips: the folder MuST-C's segments are cut into is required" in err
    (pair / "data" / "tst-COMMON" / "txt" / "tst-COMMON.nl").write_text("Dank je.\n")
    code, _, err = cli([tmp_path / "m", "--preset", "mustc-en-nl", "--data", pair, "--clips", tmp_path / "c",
                        "--predictions", tmp_path / "p"])
    assert code != 0 and "Traceback" not in err
    assert "tst-COMMON.yaml lists 3 segments but tst-COMMON.en has 3 lines and tst-COMMON.nl 1" in err


# --- MMAU ----------------------------------------------------------------------------------------

def test_mmau_preset_speech_and_sound_macro_accuracy(cli, tmp_path: Path) -> None:
    items = [
        {"id": "s1", "audio_id": "./test-mini-audios/s1.wav", "question": "What is the speaker's mood?",
         "choices": ["calm", "angry", "sad", "happy"], "answer": "angry", "task": "speech"},
        {"id": "s2", "audio_id": "./test-mini-audios/s2.wav", "question": "How many people talk?",
         "choices": ["one", "two", "three"], "answer": "two", "task": "speech"},
        {"id": "n1", "audio_id": "./test-mini-audios/n1.wav", "question": "What makes the sound?",
         "choices": ["dog", "car"], "answer": "car", "task": "sound"},
        {"id": "m1", "audio_id": "./test-mini-audios/m1.wav", "question": "Which instrument?",
         "choices": ["piano", "violin"], "answer": "piano", "task": "music"},
    ]
    for item in items:
        tone(tmp_path / "mmau" / item["audio_id"], 0.3)
    listing = tmp_path / "mmau" / "mmau-test-mini.json"
    listing.write_text(json.dumps(items))
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "s1", "prediction": "B"}, {"id": "s2", "prediction": "three"}, {"id": "n1", "prediction": "car"},
    ])
    out_dir = tmp_path / "mmau-out"
    code, out, err = cli([tmp_path / "m", "--preset", "mmau-test-mini", "--data", listing, "--predictions", preds,
                          "--output-dir", out_dir])
    assert code == 0, err
    rows = read_jsonl(out_dir / "benchmark.jsonl")
    assert [r["id"] for r in rows] == ["s1", "s2", "n1"]  # music is not in Table 12
    assert rows[1]["instruction"] == "How many people talk? Pick one answer from: A. one B. two C. three."
    report = json.loads((out_dir / "report.json").read_text())
    assert report["metrics"]["macro_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert "(paper Table 12, Soundwave: 46.25%)" in out
    moved = tmp_path / "elsewhere"
    (tmp_path / "mmau" / "test-mini-audios").rename(moved)
    code, _, err = cli([tmp_path / "m", "--preset", "mmau-test-mini", "--data", listing, "--clips", moved,
                        "--predictions", preds, "--output-dir", tmp_path / "moved-out"])
    assert code == 0, err
    assert (tmp_path / "moved-out" / read_jsonl(tmp_path / "moved-out" / "benchmark.jsonl")[0]["audio"]).resolve() == \
        (moved / "s1.wav").resolve()


# --- AIR-Bench chat and the judge ----------------------------------------------------------------

class _Judge(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible chat endpoint: 8 for an answer holding "sunny", else 3 (a reply
    without a score when the server's ``malformed`` is set, a 401 error without an API key when
    its ``needs_key`` is); every request is recorded."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((self.path, self.headers.get("Authorization"), body))  # type: ignore[attr-defined]
        answer = body["messages"][-1]["content"].split("Assistant's answer:")[-1]
        reply = "It is fine." if server.malformed else (  # type: ignore[attr-defined]
            f"Matches the reference.\nScore: {8 if 'sunny' in answer else 3}")
        status = 401 if server.needs_key and not self.headers.get("Authorization") else 200  # type: ignore[attr-defined]
        data = json.dumps({"error": {"message": "Incorrect API key provided"}} if status == 401 else
                          {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def judge_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.requests, server.malformed, server.needs_key = [], False, False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def airbench_chat(root: Path) -> Path:
    items = [
        {"path": "q1.wav", "question": "What is the weather like, according to the speaker?",
         "answer_gt": "The speaker says it is sunny.", "task_name": "speech_QA", "dataset_name": "common_voice",
         "uniq_id": 1},
        {"path": "q2.wav", "question": "What do the two people plan?", "answer_gt": "They plan a trip.",
         "task_name": "speech_dialogue_QA", "dataset_name": "fisher", "uniq_id": 2},
        {"path": "q3.wav", "question": "What plays?", "answer_gt": "A piano.", "task_name": "music_QA",
         "dataset_name": "MusicCaps", "uniq_id": 3},
    ]
    chat = root / "AIR-Bench" / "Chat"
    for item in items:
        tone(chat / f"{item['task_name']}_{item['dataset_name']}" / item["path"], 0.3)
    (chat / "Chat_meta.json").write_text(json.dumps(items))
    return root / "AIR-Bench"


def _chat_args(tmp_path: Path, server: ThreadingHTTPServer) -> list:
    tmp_path.mkdir(exist_ok=True)
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "speech_QA_common_voice_1", "prediction": "It is sunny."},
        {"id": "speech_dialogue_QA_fisher_2", "prediction": "Nothing."},
    ])
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return [tmp_path / "m", "--preset", "airbench-chat-speech", "--data", airbench_chat(tmp_path),
            "--predictions", preds, "--output-dir", tmp_path / "chat", "--judge-url", url, "--judge-model", "judge-7b"]


def test_airbench_chat_judged_beside_the_paper_and_resumed(cli, tmp_path: Path, judge_server, monkeypatch) -> None:
    monkeypatch.setenv("SWV_JUDGE_API_KEY", "sk-test")
    args = _chat_args(tmp_path, judge_server)
    code, out, err = cli(args)
    assert code == 0, err
    assert len(judge_server.requests) == 2  # the music question is not a speech task
    path, auth, body = judge_server.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "judge-7b"
    assert body["messages"][0] == {"role": "system", "content": JUDGE_RUBRIC}
    assert "Question: What is the weather like, according to the speaker?" in body["messages"][1]["content"]
    assert "Reference answer: The speaker says it is sunny." in body["messages"][1]["content"]
    report = json.loads((tmp_path / "chat" / "report.json").read_text())
    assert report["metrics"] == {"judge_score": pytest.approx(5.5), "scored": 2}
    assert report["per_task"]["speech_QA"]["judge_score"] == 8 and report["per_task"]["speech_dialogue_QA"]["judge_score"] == 3
    assert [i["score"] for i in report["judge_inputs"]] == [8, 3]
    assert report["judge"]["model"] == "judge-7b" and "sk-test" not in json.dumps(report)
    assert "benchmark: AIR-Bench chat, speech   judge score: 5.50   (paper Table 7, Soundwave: 6.51)" in out
    code, _, err = cli(args)  # a rerun reuses the judgments
    assert code == 0, err
    assert len(judge_server.requests) == 2


def test_judge_errors_are_one_line(cli, tmp_path: Path, judge_server, monkeypatch) -> None:
    monkeypatch.delenv("SWV_JUDGE_API_KEY", raising=False)
    judge_server.needs_key = True
    code, _, err = cli(_chat_args(tmp_path / "a", judge_server))
    assert code != 0 and "Traceback" not in err
    assert "/v1/chat/completions: HTTP 401 (" in err and "Incorrect API key provided" in err
    judge_server.needs_key, judge_server.malformed = False, True
    code, _, err = cli(_chat_args(tmp_path, judge_server))
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("eval:")]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err
    assert "item 'speech_QA_common_voice_1': the judge's reply does not end with 'Score: N' (N 1-10): " \
           "'It is fine.'" in lines[0]
    port = judge_server.server_address[1]
    judge_server.shutdown()
    judge_server.server_close()
    code, _, err = cli(_chat_args(tmp_path / "b", judge_server))
    assert code != 0 and "Traceback" not in err
    assert f"--judge-url http://127.0.0.1:{port}/v1/chat/completions: cannot reach the judge" in err


@pytest.mark.parametrize(("extra", "message"), [
    (["--preset", "meld", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j"],
     "--judge-url scores open answers (--task open), not task 'classification'"),
    (["--task", "open", "--manifest", "m.jsonl", "--judge-url", "http://127.0.0.1:9/v1"], "--judge-url needs --judge-model"),
    (["--task", "open", "--manifest", "m.jsonl", "--judge-model", "j"], "--judge-model needs --judge-url"),
    (["--task", "open", "--manifest", "m.jsonl", "--judge-url", "127.0.0.1:9", "--judge-model", "j"],
     "--judge-url: expected an http:// or https:// URL"),
])
def test_judge_usage_errors(cli, tmp_path: Path, extra: list, message: str) -> None:
    if "meld" in extra:
        extra = [*extra, "--data", meld(tmp_path)]
    code, _, err = cli([tmp_path / "m", *extra])
    assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize(("reply", "score"), [("Good.\nScore: 7", 7), ("score: 10/10", 10), ("Fine\nScore = 1.", 1)])
def test_parse_score(reply: str, score: int) -> None:
    assert parse_score(reply, "x") == score


@pytest.mark.parametrize("reply", ["", "Score: 11", "Score: 0", "Score: 7.5", "Score: 7\nbut maybe 6", "seven"])
def test_parse_score_refuses(reply: str) -> None:
    with pytest.raises(ServiceError, match="does not end with 'Score: N'"):
        parse_score(reply, "x")


def test_new_presets_are_registered_with_the_papers_numbers() -> None:
    expected = {"airbench-foundation-speech": ("Table 6", 0.755), "airbench-chat-speech": ("Table 7", 6.51),
                "airbench-foundation-sound": ("Table 16", 0.621), "airbench-foundation-music": ("Table 16", 0.401),
                "meld": ("Table 5", 0.635), "mustc-en-nl": ("Table 5", 27.0), "mustc-en-it": ("Table 5", 22.2),
                "mustc-en-ro": ("Table 5", 16.9), "mmau-test-mini": ("Table 12", 0.4625)}
    for name, (table, value) in expected.items():
        paper = get_preset(name).config.paper
        assert paper is not None and (paper.table, paper.value) == (table, value)
    assert get_preset("mustc-en-es").config.paper is None  # cut off in the paper's text
    assert get_preset("mustc-en-ro").prompt() == "Translate the speech into Romanian."
