"""``swv demo``: train a real Soundwave on CPU and test it on speech it has never heard.

1. weights: convert the packaged Whisper tiny.en and SmolLM2-135M-Instruct (cached).
2. data: synthesize training, dev and held-out speech from the shipped text (cached; espeak-ng
   and Piper train, Pico is the out-of-engine dev engine), then transcribe every condition
   (:data:`CONDITIONS`: held-out, dev, noisy dev) with Whisper tiny.en's own decoder.
3. train the ``demo`` recipe (``demo-quick`` with ``quick``, ``demo-long`` with ``long``):
   Stage I (alignment, CTC only), then Stage II (shrinking) and Stage III (SFT) (and the long
   recipe's label phase). Between Stage I and II the CTC WER per
   condition and the label accuracies (pitch, sex, rate) of the untrained LLM side are measured.
4. measure the final model on every condition and label task, write ``results.json`` and
   ``plot.png``.
5. print held-out answers and answer every task's prompt about one held-out clip.

Every number printed or written is measured in the run. A rerun reuses the converted weights,
the synthesized data, the feature cache and finished stages (same recipe).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swv.core.errors import UsageError

#: The data source whose manifest holds the base LLM's replies (:mod:`swv.demo.replies`), written
#: before training when a stage trains on it.
REPLY_SOURCE = "reply"
#: Recipe dataset name -> manifest written by :func:`swv.demo.data.build_dataset` (the replies' by
#: :func:`write_replies`).
MANIFESTS = {"asr": "train_asr.jsonl", "asr_sft": "train_asr_sft.jsonl", "pitch": "train_pitch.jsonl", "sex": "train_sex.jsonl",
             "rate": "train_rate.jsonl", "qa": "train_qa.jsonl", "dev": "dev_asr.jsonl", REPLY_SOURCE: "train_reply.jsonl"}
#: Transcription conditions measured for every model and for Whisper's own decoder: the held-out
#: set (training engines, unseen voices; the reported result), the out-of-engine dev split, and
#: the same dev clips with reverberation and noise.
CONDITIONS = {"heldout": "heldout_asr.jsonl", "dev": "dev_asr.jsonl", "dev_noisy": "dev_noisy_asr.jsonl"}
#: Dev clips scored per condition (the dev split is for choosing, a sample is enough).
DEV_EVAL_LIMIT = {"full": 80, "quick": 20}
#: Renditions of each training question (different voices).
RENDITIONS = {"full": 3, "quick": 2}
#: Corpus sentences spoken for training (each once, spread over the corpus; None: all of it).
CORPUS_LIMIT: dict[str, int | None] = {"full": 4000, "quick": 1000}
QUICK_EVAL_LIMIT = 20


@dataclass
class DemoOptions:
    workdir: Path = Path("runs/demo")
    quick: bool = False
    long: bool = False  # the demo-long recipe (a label phase; longer than the budget) on the full data
    recipe: str | None = None
    overrides: list[str] = field(default_factory=list)
    eval_limit: int | None = None  # held-out items per task (None: all)

    def __post_init__(self) -> None:
        if self.quick and self.long:
            raise UsageError("swv demo: --quick and --long exclude each other (choose one)")

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "long" if self.long else "full"

    @property
    def data_mode(self) -> str:
        """The data set's size: ``quick`` or ``full`` (a long demo trains on the full one)."""
        return "quick" if self.quick else "full"

    @property
    def suffix(self) -> str:
        """Each mode keeps its run directory apart (``run``, ``run-quick``, ``run-long``)."""
        return "" if self.mode == "full" else f"-{self.mode}"

    @property
    def data_suffix(self) -> str:
        """Quick and full data sets are kept apart; a long demo shares the full one."""
        return "" if self.data_mode == "full" else f"-{self.data_mode}"

    @property
    def limit(self) -> int | None:
        return self.eval_limit if self.eval_limit is not None else (QUICK_EVAL_LIMIT if self.quick else None)

    @property
    def dev_limit(self) -> int:
        return DEV_EVAL_LIMIT[self.data_mode]

    @property
    def recipe_name(self) -> str:
        return self.recipe or ("demo" if self.mode == "full" else f"demo-{self.mode}")


class Clock:
    """Wall time of each named phase (seconds), in order."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.log = log

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        self.log(f"\n== {name} ==")
        try:
            yield
        finally:
            self.phases[name] = round(time.perf_counter() - begin, 1)
            self.log(f"({name}: {self.phases[name]:.0f} s)")

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def path_overrides(workdir: Path, whisper_dir: Path, llm_dir: Path, suffix: str = "", data_suffix: str = "") -> list[str]:
    """Recipe overrides that point the demo recipe at this work directory (JSON-quoted paths):
    ``run<suffix>/``, ``data<data_suffix>/``, the shared ``feature_cache/`` and converted weights."""
    root = workdir.resolve()

    def q(path: Path) -> str:
        return json.dumps(str(path))

    out = [
        f"output_dir={q(root / ('run' + suffix))}",
        f"model.encoder.path={q(whisper_dir.resolve())}",
        f"model.backbone.path={q(llm_dir.resolve())}",
        f"data.feature_cache={q(root / 'feature_cache')}",
    ]
    data = root / f"data{data_suffix}"
    out += [f"data.datasets.{name}.manifest={q(data / file)}" for name, file in MANIFESTS.items()]
    return out


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.nn.modules.transformer")


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX) and PyTorch may use
    it. Without it, PyTorch falls back to a reference bf16 GEMM that is ~100x slower than float32
    (measured on an AVX2-only EPYC: one 256 x 576 x 49,153 CTC-head forward+backward 87 s vs 0.6 s).
    PyTorch's kernels limited to AVX2 or below (``ATEN_CPU_CAPABILITY``) or oneDNN's
    (``ONEDNN_MAX_CPU_ISA``), as when emulating an older CPU, count as no native bf16."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    import torch

    onednn_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return "AVX512" in torch.backends.cpu.get_cpu_capability() and (onednn_isa == "ALL" or onednn_isa.startswith(("AVX512", "AVX10", "AMX")))


def precision_overrides(log: Callable[[str], None] = print) -> list[str]:
    """``precision=no`` (float32) when the CPU has no native bf16 (the demo recipes ask for bf16)."""
    if cpu_has_bf16():
        return []
    log("this CPU has no AVX512-BF16/AMX: training in float32 instead of the recipe's bf16 autocast")
    return ['precision="no"']  # quoted: YAML reads a bare no as false


def load_demo_recipe(options: DemoOptions, whisper_dir: Path, llm_dir: Path, log: Callable[[str], None] = print) -> Any:
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry

    overrides = (path_overrides(options.workdir, whisper_dir, llm_dir, options.suffix, options.data_suffix)
                 + precision_overrides(log) + list(options.overrides))
    loaded = load_recipe(options.recipe_name, overrides, default_registry())
    names = [s.name for s in loaded.recipe.stages]
    if names[:1] != ["alignment"] or len(names) < 2:
        raise UsageError(f"recipe {options.recipe_name}: the demo needs an 'alignment' stage first and at least one more stage, got {names}")
    return loaded


def build_feature_cache(loaded: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Encode the training audio once with the frozen encoder (when swv has a feature cache)."""
    try:
        from swv.train.train_recipe import cache_stage_features
    except ImportError:
        log("feature cache: not available in this swv; the encoder runs at every step")
        return {"available": False}
    if not loaded.recipe.data.use_feature_cache:
        return {"available": True, "used": False}
    target, new, old = cache_stage_features(loaded, "alignment", batch_size=16)
    log(f"feature cache: {new} clip(s) encoded, {old} already cached ({target})")
    return {"available": True, "used": True, "encoded": new, "reused": old}


def write_replies(loaded: Any, llm_dir: Path, data_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The ``reply`` source's manifest (:func:`swv.demo.replies.write_reply_manifest`) from the
    recipe's untrained model (zero LoRA: the base LLM with the recipe's system prompt)."""
    from functools import partial

    from swv.demo.data import QA_INSTRUCTIONS
    from swv.demo.replies import write_reply_manifest
    from swv.train.runner import build_model

    # tags=[]: the data sources' tags are not read (the reply manifest itself does not exist yet)
    untrained = partial(build_model, loaded, None, tags=[])
    identity = json.dumps([(llm_dir / "config.json").read_text(), loaded.recipe.model.system_prompt])
    return write_reply_manifest(untrained, identity, data_dir, QA_INSTRUCTIONS, log)


def load_model(export_dir: Path) -> Any:
    import torch

    from swv.model.speechlm import SpeechLM

    model = SpeechLM.from_pretrained(export_dir)
    model.eval()
    torch.manual_seed(0)
    return model


def run_demo(options: DemoOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole demo; returns the results (also written to ``<run dir>/results.json``)."""
    _quiet_libraries()
    from swv.demo.data import build_dataset
    from swv.demo.report import write_results
    from swv.demo.synth import EngineSynthesizer
    from swv.demo.text import load_demo_text
    from swv.demo.weights import prepare_weights
    from swv.train.train_recipe import train

    clock = Clock(log)
    results: dict[str, Any] = {"mode": options.mode, "recipe": options.recipe_name, "workdir": str(options.workdir.resolve())}
    with clock.phase("1. weights"):
        whisper_dir, llm_dir = prepare_weights(options.workdir / "weights", log)
    with clock.phase("2. data"):
        text = load_demo_text()
        data_dir = options.workdir / f"data{options.data_suffix}"
        results["data"] = build_dataset(data_dir, text, EngineSynthesizer(), renditions=RENDITIONS[options.data_mode],
                                        corpus_limit=CORPUS_LIMIT[options.data_mode], log=log)
    loaded = load_demo_recipe(options, whisper_dir, llm_dir, log)
    run_dir = Path(loaded.recipe.output_dir)
    stages = [s.name for s in loaded.recipe.stages]
    items = evaluation_items(data_dir, options)
    if any(REPLY_SOURCE in s.data.datasets for s in loaded.recipe.stages):
        with clock.phase("2c. the base LLM's replies to training transcripts"):
            results["replies"] = write_replies(loaded, llm_dir, data_dir, log)
    with clock.phase("2b. reference: Whisper tiny.en's own decoder"):
        results["reference"] = measure_reference(items["asr"], log)
    with clock.phase("3a. feature cache"):
        results["feature_cache"] = build_feature_cache(loaded, log)
    with clock.phase("3b. stage I: alignment (CTC only)"):
        train(loaded, stage="alignment")
    with clock.phase("3c. after stage I: CTC WER, and the untrained LLM side"):
        results["before"] = measure_before(run_dir, items, text, log, dev_questions=not options.quick)
    with clock.phase("3d. stages II and III"):
        train(loaded, from_stage=stages[1])
    final = run_dir / stages[-1] / "export"
    with clock.phase("4. final model on every condition (swv eval)"):
        results["after"] = measure_final(final, run_dir / "eval", items, text, log)
    with clock.phase("4b. ablation: the shrinking adapter's acoustic path zeroed"):
        results["ablation"] = measure_ablation(final, run_dir / "eval", items, log)
    with clock.phase("5. swv infer on one held-out clip"):
        results["inference"] = _infer_one(final, items["qa"], log)
    results["timings_s"] = {**clock.phases, "total": clock.total()}
    json_path, png_path = write_results(run_dir, _summary(results), stages)
    log(_summary_text(results))
    log(f"results -> {json_path}\nloss curves -> {png_path}")
    return results


def evaluation_items(data_dir: Path, options: DemoOptions) -> dict[str, Any]:
    """``{"asr": {condition: Items}, task: Items, "dev_qa": Items}`` for the label tasks and the
    questions (held-out, ``options.limit`` items each), the dev conditions and the dev questions
    (``options.dev_limit`` each)."""
    from swv.demo.data import LABEL_TASKS
    from swv.demo.evaluate import Items

    asr = {c: Items.load(data_dir / f, options.limit if c == "heldout" else options.dev_limit) for c, f in CONDITIONS.items()}
    tasks = {task: Items.load(data_dir / f"heldout_{task}.jsonl", options.limit) for task in (*LABEL_TASKS, "qa")}
    return {"asr": asr, **tasks, "dev_qa": Items.load(data_dir / "dev_qa.jsonl", options.dev_limit)}


def _questions(text: Any) -> dict[str, Any]:
    """Held-out and dev questions by their text."""
    return {q.text: q for q in (*text.heldout_questions, *text.dev_questions)}


def _spoken_qa(model_dir: Path, items: dict[str, Any], text: Any, eval_dir: Path, when: str, log: Callable[[str], None],
               dev: bool = True) -> dict[str, Any]:
    """``{"qa": held-out, "dev_qa": dev}`` spoken question accuracy of ``model_dir`` (swv eval);
    the held-out questions alone without ``dev``."""
    from swv.demo import evaluate as ev

    questions = _questions(text)
    sets = (("qa", "held-out"), ("dev_qa", "dev")) if dev else (("qa", "held-out"),)
    return {key: _report(f"{what} spoken QA accuracy {when} (swv eval)",
                         ev.qa_keyword_accuracy(model_dir, items[key], questions, eval_dir / f"{when}-{key}"), log)
            for key, what in sets}


def measure_reference(conditions: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Whisper tiny.en's own decoder (CTranslate2, the packaged model) on every condition."""
    from swv.demo.weights import whisper_ct2_dir
    from swv.demo.whisper_ref import WhisperReference, whisper_wer

    reference = WhisperReference(whisper_ct2_dir())
    return {c: _report(f"{c} WER of Whisper tiny.en's own decoder", whisper_wer(reference, items), log) for c, items in conditions.items()}


def _label_accuracy(model_dir: Path, items: dict[str, Any], eval_dir: Path, when: str, log: Callable[[str], None]) -> dict[str, Any]:
    from swv.demo import evaluate as ev
    from swv.demo.data import LABEL_TASKS

    return {task: _report(f"{task} accuracy {when} (swv eval)", ev.eval_task(model_dir, items[task], "classification",
                                                                             eval_dir / f"{when}-{task}", 8), log)
            for task in LABEL_TASKS}


def measure_before(run_dir: Path, items: dict[str, Any], text: Any, log: Callable[[str], None],
                   dev_questions: bool = True) -> dict[str, Any]:
    """After Stage I: the CTC head's WER per condition, the base LLM on the questions as text,
    and the Stage I export (untrained shrinking adapter, zero LoRA: the prompted base LLM) on
    the spoken questions; the dev questions (typed and spoken) only with ``dev_questions``
    (``--quick`` leaves them to the final model, for time). (The label tasks are not measured
    here: an untrained acoustic path answers them at chance by construction.)"""
    from swv.demo import evaluate as ev

    stage1, eval_dir = run_dir / "alignment" / "export", run_dir / "eval"
    model = load_model(stage1)
    out = {
        "ctc": {c: _report(f"{c} WER of the CTC head after stage I", ev.ctc_wer(model, i), log) for c, i in items["asr"].items()},
        "text_qa_base": _report("base LLM reading the held-out questions as text", ev.text_qa_accuracy(model, text.heldout_questions), log),
    }
    if dev_questions:
        out["text_qa_base_dev"] = _report("base LLM reading the dev questions as text", ev.text_qa_accuracy(model, text.dev_questions), log)
    del model
    return {**out, **_spoken_qa(stage1, items, text, eval_dir, "before", log, dev=dev_questions)}


def measure_final(final: Path, eval_dir: Path, items: dict[str, Any], text: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The final model: its CTC head's WER and ASR through ``swv eval`` per condition, then the
    label tasks and the questions."""
    from swv.demo import evaluate as ev

    model = load_model(final)
    out: dict[str, Any] = {"ctc": {c: _report(f"{c} WER of the final model's CTC head", ev.ctc_wer(model, i), log)
                                   for c, i in items["asr"].items()}}
    del model
    out["asr"] = {c: _report(f"{c} ASR WER of the final model", ev.eval_task(final, i, "asr", eval_dir / f"asr-{c}", 32), log)
                  for c, i in items["asr"].items()}
    out["labels"] = _label_accuracy(final, items, eval_dir, "after", log)
    return {**out, **_spoken_qa(final, items, text, eval_dir, "after", log)}


def measure_ablation(final: Path, eval_dir: Path, items: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The final model with its acoustic path zeroed (:mod:`swv.demo.ablation`): held-out ASR WER
    and the label tasks."""
    from swv.demo import evaluate as ev
    from swv.demo.ablation import acoustic_path_ablated

    ablated = acoustic_path_ablated(final, eval_dir.parent / "ablated-export")
    heldout = items["asr"]["heldout"]
    return {
        "asr": {"heldout": _report("heldout ASR WER, acoustic path zeroed", ev.eval_task(ablated, heldout, "asr",
                                                                                       eval_dir / "ablated-asr", 32), log)},
        "labels": _label_accuracy(ablated, items, eval_dir, "ablated", log),
    }


def _report(title: str, result: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    key = "wer" if "wer" in result else "accuracy"
    value = result[key]
    shown = "n/a" if value is None else f"{100 * value:.1f}%"
    extra = f" ({result['correct']}/{result['total']})" if "correct" in result else f" ({result.get('num_ref_words')} words)"
    log(f"{title}: {key} {shown}{extra} [{result['seconds']:.0f} s]")
    for example in result.get("examples", []):
        log(f"    {example['reference']!r} -> {example['prediction']!r}")
    return {k: v for k, v in result.items() if k != "table"}


def _infer_one(model_dir: Path, items: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """What ``swv infer`` answers on the first held-out question clip with three prompts."""
    from swv.data.manifest import resolve_audio
    from swv.demo.data import EVAL_PROMPTS
    from swv.infer.batch import load_pipeline

    record = items.records[0]
    audio = resolve_audio(items.manifest, record)
    labels = ", ".join(f"{k} {record[k]}" for k in ("pitch", "sex", "rate_label") if record.get(k))
    log(f"clip {audio.name}: {record['speaker']} ({labels}) says {record['text']!r}")
    answers = {}
    pipe = load_pipeline(model_dir)
    for task in ("asr", "pitch", "sex", "rate", "qa"):
        prompt = EVAL_PROMPTS[task]
        log(f"$ swv infer {model_dir} {audio} --prompt {prompt!r}")
        answers[prompt] = pipe(str(audio), prompt, max_new_tokens=32).strip()
        log(f"  -> {answers[prompt]}")
    return {"clip": record["id"], "text": record["text"], "labels": {k: record.get(k) for k in ("pitch", "sex", "rate_label")},
            "answers": answers}


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with a ``headline``: every number per condition and per label task."""
    before, after, reference = results.get("before") or {}, results.get("after") or {}, results.get("reference") or {}
    ablation = results.get("ablation") or {}

    def pick(part: Any, *keys: str) -> Any:
        for key in keys:
            part = part.get(key) if isinstance(part, dict) else None
        return part

    wer = {c: {"whisper_decoder": pick(reference, c, "wer"), "ctc_after_stage1": pick(before, "ctc", c, "wer"),
               "ctc_final": pick(after, "ctc", c, "wer"), "final_model": pick(after, "asr", c, "wer"),
               "overlong_answers": pick(after, "asr", c, "overlong")}
           for c in CONDITIONS}
    labels = {t: {"before": pick(before, "labels", t, "accuracy"), "after": pick(after, "labels", t, "accuracy"),
                  "acoustic_path_zeroed": pick(ablation, "labels", t, "accuracy")}
              for t in sorted({*(before.get("labels") or {}), *(after.get("labels") or {})})}
    return {
        **results,
        "headline": {
            "ctc_wer_after_stage1": wer["heldout"]["ctc_after_stage1"],
            "ctc_wer_final": wer["heldout"]["ctc_final"],
            "asr_wer_final": wer["heldout"]["final_model"],
            "whisper_wer_heldout": wer["heldout"]["whisper_decoder"],
            "pitch_accuracy_before": pick(before, "labels", "pitch", "accuracy"),
            "pitch_accuracy_after": pick(after, "labels", "pitch", "accuracy"),
            "spoken_qa_accuracy_before": pick(before, "qa", "accuracy"),
            "spoken_qa_accuracy_after": pick(after, "qa", "accuracy"),
            "spoken_qa_dev_accuracy_before": pick(before, "dev_qa", "accuracy"),
            "spoken_qa_dev_accuracy_after": pick(after, "dev_qa", "accuracy"),
            "text_qa_accuracy_base_llm": pick(before, "text_qa_base", "accuracy"),
            "text_qa_dev_accuracy_base_llm": pick(before, "text_qa_base_dev", "accuracy"),
            "asr_wer_final_acoustic_path_zeroed": pick(ablation, "asr", "heldout", "wer"),
            "wer": wer,
            "labels": labels,
        },
    }


def _summary_text(results: dict[str, Any]) -> str:
    head = _summary(results)["headline"]

    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = ["", f"== summary ({results['mode']} demo, {results['timings_s']['total'] / 60:.1f} min) ==",
             f"{'WER':<10} {'Whisper decoder':>16} {'CTC stage I':>12} {'CTC final':>10} {'final model':>12}"]
    for condition, row in head["wer"].items():
        lines.append(f"{condition:<10} {pct(row['whisper_decoder']):>16} {pct(row['ctc_after_stage1']):>12} "
                     f"{pct(row['ctc_final']):>10} {pct(row['final_model']):>12}")
    for task, row in head["labels"].items():
        lines.append(f"{task} accuracy (held-out): {pct(row['after'])} (acoustic path zeroed: "
                     f"{pct(row['acoustic_path_zeroed'])})")
    lines.append(f"spoken question answering: {pct(head['spoken_qa_accuracy_before'])} before -> "
                 f"{pct(head['spoken_qa_accuracy_after'])} after (base LLM reading the questions as text: "
                 f"{pct(head['text_qa_accuracy_base_llm'])}); dev questions "
                 f"{pct(head['spoken_qa_dev_accuracy_before'])} -> {pct(head['spoken_qa_dev_accuracy_after'])} "
                 f"(as text: {pct(head['text_qa_dev_accuracy_base_llm'])})")
    return "\n".join(lines)
