"""Plots: every training run draws its curves (losses with the held-out ones, learning rate,
throughput) into output_dir/plots/; `swv plot` redraws them; `swv eval --plot` charts the score
table; without matplotlib training says so in one line and goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swv.core.errors import UsageError
from swv.core.metrics_log import METRICS_FILE, step_records
from swv.core.plotting import PLOT_HINT, plot_curves, run_curves
from swv.eval.charts import GROUPS_CHART, group_scores
from swv.eval.evaluation import evaluate

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = 4
#: the tiny recipe's first stage only, short; held-out losses at step 2 (with the checkpoint) and at the end
TINY = ["train", "--recipe", "tiny", "output_dir=run", "--stage", "alignment", f"stages.0.max_steps={STEPS}",
        "stages.0.log_every=1", "stages.0.save_every=2"]
#: ``python -c`` prelude: the process cannot import matplotlib, as if it were not installed
NO_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; from swv.cli.main import main; main(sys.argv[1:])"


def _env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    out["SWV_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return out


def _swv(args: list[str], cwd: Path, *, matplotlib: bool = True) -> subprocess.CompletedProcess[str]:
    entry = ["-m", "swv.cli"] if matplotlib else ["-c", NO_MATPLOTLIB]
    return subprocess.run([sys.executable, *entry, *args], capture_output=True, text=True, cwd=cwd, env=_env())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("plots")
    res = _swv(TINY, work)
    assert res.returncode == 0, res.stderr[-2000:]
    return work / "run", res.stdout


def test_training_writes_its_plots(tiny_run: tuple[Path, str]) -> None:
    run, stdout = tiny_run
    for name in ("alignment.png", "run.png"):
        assert (run / "plots" / name).read_bytes()[:8] == PNG
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["alignment.png", "run.png"]  # atomic: no temporaries
    assert f"[alignment] plots -> {Path('run') / 'plots' / 'alignment.png'}" in stdout and PLOT_HINT not in stdout
    # what the figure is drawn from: training and held-out losses, learning rate and throughput, told apart by name
    records = step_records(run / "alignment" / METRICS_FILE)
    held_out = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in held_out] == [2, STEPS] and all("loss" not in r for r in held_out)
    curves = run_curves(run, ["alignment"])["alignment"]
    assert [s for s, _ in curves["ctc_loss"]] == list(range(1, STEPS + 1))
    assert [s for s, _ in curves["eval_ctc_loss"]] == [2, STEPS]
    assert len(curves["lr"]) == STEPS and all(v > 0 for _, v in curves["samples_per_s"])
    assert "epoch" not in curves


def test_stage_panels_tell_held_out_from_training() -> None:
    from matplotlib.figure import Figure

    from swv.core.plotting import _draw_stage

    curves = {"loss": [(1, 3.0), (2, 2.0)], "ctc_loss": [(1, 3.0), (2, 2.0)], "lr": [(1, 1e-3), (2, 5e-4)],
              "eval_loss": [(2, 2.5)], "eval_ctc_loss": [(2, 2.5)]}
    loss_ax, lr_ax, speed_ax = Figure().subplots(1, 3)
    _draw_stage((loss_ax, lr_ax, speed_ax), "alignment", curves)
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert list(lines) == ["loss", "ctc_loss", "eval_loss", "eval_ctc_loss"]
    assert lines["eval_ctc_loss"].get_linestyle() == "--" and lines["ctc_loss"].get_linestyle() == "-"
    assert lines["eval_ctc_loss"].get_color() == lines["ctc_loss"].get_color() != lines["loss"].get_color()
    assert loss_ax.get_yscale() == "log"
    assert [line.get_label() for line in lr_ax.get_lines()] == ["lr"]
    assert not speed_ax.get_lines() and [t.get_text() for t in speed_ax.texts] == ["not logged"]


def test_swv_plot_redraws(cli, tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = tiny_run
    for png in (run / "plots").iterdir():
        png.unlink()
    code, out, err = cli(["plot", run])
    assert code == 0, err
    assert (run / "plots" / "alignment.png").read_bytes()[:8] == PNG and (run / "plots" / "run.png").read_bytes()[:8] == PNG
    assert out.splitlines() == [f"wrote {run / 'plots' / 'alignment.png'}", f"wrote {run / 'plots' / 'run.png'}"]
    # --output: one figure where asked (the format from its extension), the run's plots untouched
    before = (run / "plots" / "run.png").stat().st_mtime_ns
    code, out, err = cli(["plot", run, "--stage", "alignment", "--output", tmp_path / "a.svg"])
    assert code == 0, err
    assert b"<svg" in (tmp_path / "a.svg").read_bytes() and out.strip() == f"wrote {tmp_path / 'a.svg'}"
    assert (run / "plots" / "run.png").stat().st_mtime_ns == before
    code, _, err = cli(["plot", run, "--stage", "nope"])
    assert code == 2 and err.strip() == f"error: --stage 'nope': no such stage in {run} (stages: alignment, shrinking, sft)"
    code, _, err = cli(["plot", tmp_path])
    assert code == 1 and err.count("\n") == 1 and "no metrics.jsonl with metrics in any stage folder" in err
    code, _, err = cli(["plot", run, "--stage", "sft"])  # in the recipe, not trained yet
    assert code == 1 and err.strip() == f"error: {run}: no metrics.jsonl with metrics for stage 'sft'"
    code, _, err = cli(["plot", run, "--output", tmp_path / "a.nope"])
    assert code == 2 and err.count("\n") == 1 and "unsupported image format" in err


def test_run_figure_from_metrics_with_events_and_a_torn_line(tmp_path: Path, capsys) -> None:
    stage = tmp_path / "sft"
    stage.mkdir()
    (stage / METRICS_FILE).write_text(
        json.dumps({"step": 0, "event": "mixture", "mixture": {"asr": 1.0}}) + "\n"
        + json.dumps({"step": 5, "loss": 1.0, "lm_loss": 1.0, "lr": 1e-3, "epoch": 0, "samples_per_s": 9.5}) + "\n"
        + '{"step": 10, "loss": 0.')
    curves = run_curves(tmp_path, ["sft", "missing"])
    assert curves == {"sft": {"loss": [(5, 1.0)], "lm_loss": [(5, 1.0)], "lr": [(5, 1e-3)], "samples_per_s": [(5, 9.5)]},
                      "missing": {}}
    assert f"{stage / METRICS_FILE}:3: dropped a torn or invalid metrics record" in capsys.readouterr().err
    assert plot_curves(curves, tmp_path / "out" / "run.png").read_bytes()[:8] == PNG
    assert plot_curves({}, tmp_path / "empty.png").read_bytes()[:8] == PNG
    with pytest.raises(UsageError, match="unsupported image format"):
        plot_curves(curves, tmp_path / "run.nope")


def test_without_matplotlib_training_says_so_once(tmp_path: Path) -> None:
    res = _swv([*TINY[:6], "stages.0.max_steps=2", "stages.0.log_every=1"], tmp_path, matplotlib=False)
    assert res.returncode == 0, res.stderr[-2000:]
    hints = [line for line in res.stdout.splitlines() if PLOT_HINT in line]
    assert len(hints) == 1 and "Traceback" not in res.stderr
    assert (tmp_path / "run" / "alignment" / "export").is_dir() and not (tmp_path / "run" / "plots").exists()
    # asking for a plot explicitly is one error line
    res = _swv(["plot", str(tmp_path / "run")], tmp_path, matplotlib=False)
    assert res.returncode == 2 and res.stderr == f"error: swv plot: {PLOT_HINT}\n"


def _records(rows: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": ref, "prediction": hyp, "language": lang} for i, (lang, ref, hyp) in enumerate(rows)]


def test_group_scores_are_the_table_rows() -> None:
    asr = evaluate(_records([("en", "a b c d", "a b c d"), ("fr", "un deux", "un trois")]), "asr")
    label, groups = group_scores(asr)
    assert list(groups) == ["all", "en", "fr"] and label.startswith("%")
    assert groups["en"]["WER"] == 0.0 and groups["fr"]["WER"] == pytest.approx(50.0)
    assert groups["all"]["WER"] == pytest.approx(100 * asr["metrics"]["wer"])
    single = evaluate(_records([("en", "a b", "a b")]), "asr")
    assert list(group_scores(single)[1]) == ["all"]  # one language: the table has one row too
    with pytest.raises(UsageError, match="task 'open' has no scores to chart"):
        group_scores({"task": "open"})


def test_eval_plot_writes_the_chart(cli, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "audio": str(tmp_path / f"{i}.wav"), "text": text, "language": lang}
            for i, (lang, text) in enumerate([("en", "hello world"), ("fr", "bonjour le monde")])]
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text(json.dumps({"id": "r0", "prediction": "hello word"}) + "\n"
                           + json.dumps({"id": "r1", "prediction": "bonjour le monde"}) + "\n")
    out_dir = tmp_path / "eval"
    args = ["eval", tmp_path, "--manifest", manifest, "--predictions", predictions, "--output-dir", out_dir]
    code, _, err = cli([*args, "--task", "asr", "--plot"])
    assert code == 0, err
    assert (out_dir / "report.json").is_file() and (out_dir / GROUPS_CHART).read_bytes()[:8] == PNG
    assert f"eval: chart written to {out_dir / GROUPS_CHART}" in err
    code, _, err = cli([*args, "--task", "open", "--plot"])
    assert code == 2 and err.strip() == "error: --plot: task 'open' has no scores to chart (charts: asr, st, classification)"
