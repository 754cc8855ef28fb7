"""Shared fixtures: tiny random-init checkpoints saved locally and loaded through the real
loading code (no downloads)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _fuzz_profiles() -> None:
    """The hypothesis profiles of the fuzz modules (tests/test_fuzz*.py), chosen with
    ``SWV_FUZZ_PROFILE``: ``ci`` (default: derandomized, few examples, each fuzz module in about
    a minute) and ``long`` (random, ``SWV_FUZZ_SCALE`` = 6 times the examples by default: both
    fuzz modules in under ten minutes on two cores, for a nightly run). A fuzz test asks for
    ``examples * int(os.environ["SWV_FUZZ_SCALE"])`` examples."""
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # hypothesis is a dev extra: the fuzz modules skip themselves
        return
    common = dict(deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])
    settings.register_profile("ci", derandomize=True, **common)
    settings.register_profile("long", **common)
    profile = os.environ.setdefault("SWV_FUZZ_PROFILE", "ci")
    settings.load_profile(profile)
    os.environ.setdefault("SWV_FUZZ_SCALE", "1" if profile == "ci" else "6")


_fuzz_profiles()

TINY_WHISPER = {
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "num_mel_bins": 80,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 64,
    "vocab_size": 64,
    "max_source_positions": 1500,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}

TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full (encoder + decoder) Whisper checkpoint directory."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("whisper")
    WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER)).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-architecture causal LM with the packaged tiny chat tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from swv.assets import asset_path

    tok = AutoTokenizer.from_pretrained(str(asset_path("tiny_tokenizer")))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok) + 8,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_LLAMA,
    )
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model_config_factory(tiny_whisper_dir: Path, tiny_llama_dir: Path):
    """``make(adapters, lora=True, mode="trim") -> SpeechLMConfig``."""
    from swv.model.speechlm import SpeechLMConfig

    def make(adapters: list[dict] | None = None, *, lora: bool = True, mode: str = "trim") -> SpeechLMConfig:
        backbone = {"name": "llama", "path": str(tiny_llama_dir)}
        if lora:
            backbone["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
        return SpeechLMConfig(
            encoder={"name": "whisper", "path": str(tiny_whisper_dir), "mode": mode},
            adapters=adapters or [{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}],
            backbone=backbone,
        )

    return make


@pytest.fixture(scope="session")
def save_tiny_model(model_config_factory, tmp_path_factory: pytest.TempPathFactory):
    """``save(folder, seed=0, bundle=False) -> Path``: a tiny random-init SpeechLM
    (``model_config_factory()``, weights drawn after ``torch.manual_seed(seed)``) saved to
    ``<new temporary folder>/model`` (with its encoder and backbone inside if ``bundle``)."""
    import torch

    from swv.model.speechlm import SpeechLM

    def save(folder: str, seed: int = 0, *, bundle: bool = False) -> Path:
        torch.manual_seed(seed)
        path = tmp_path_factory.mktemp(folder) / "model"
        SpeechLM(model_config_factory()).save_pretrained(path, bundle=bundle)
        return path

    return save


@pytest.fixture(scope="module")
def bundled_model(save_tiny_model) -> Path:
    """A tiny model (with a LoRA) saved with its encoder and backbone inside the directory, one
    per test module (``save_tiny_model("bundled", bundle=True)``)."""
    return save_tiny_model("bundled", bundle=True)


@pytest.fixture(scope="session")
def lora_export(model_config_factory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SpeechLM whose LoRA is not the identity (``lora_B`` drawn with seed 1), so
    that loading it without its LoRA changes the logits. Tests must not write into it."""
    import torch

    from swv.model.speechlm import SpeechLM

    torch.manual_seed(0)
    model = SpeechLM(model_config_factory()).eval()
    randomise_lora(model, 1)
    return model.save_pretrained(tmp_path_factory.mktemp("lora") / "export")


def randomise_lora(model, seed: int) -> None:
    """Draw the LoRA ``B`` matrices of ``model``'s backbone (zero at init) from N(0, 0.1)."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)


@pytest.fixture(scope="session")
def lora_randomiser():
    """``randomise(model, seed)``: the LoRA ``B`` matrices drawn from N(0, 0.1) (see :func:`randomise_lora`)."""
    return randomise_lora


@pytest.fixture(scope="session")
def write_noise_clips():
    """``write(root, seconds) -> root``: ``clip0.wav``, ``clip1.wav``, ... in ``root``, 16 kHz
    noise of each duration in ``seconds`` (the same samples on every run)."""
    import numpy as np
    import soundfile as sf

    def write(root: Path, seconds: tuple[float, ...]) -> Path:
        rng = np.random.default_rng(0)
        for i, length in enumerate(seconds):
            sf.write(root / f"clip{i}.wav", (rng.standard_normal(int(16000 * length)) * 0.1).astype(np.float32), 16000)
        return root

    return write


def write_noise(path: Path, seconds: float) -> Path:
    """``path``: a 16 kHz WAV file of ``seconds`` of noise (N(0, 0.1), seed 0)."""
    import numpy as np
    import soundfile as sf

    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    return path


@pytest.fixture(scope="session")
def noise_writer():
    """``write(path, seconds) -> path`` (see :func:`write_noise`)."""
    return write_noise


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``clip.wav``: one second of 16 kHz noise (:func:`write_noise`), one per test module."""
    return write_noise(tmp_path_factory.mktemp("clip") / "clip.wav", 1.0)


def noise_flac(path: Path, seconds: float) -> Path:
    """``path`` (its folders made): ``seconds`` of 16 kHz noise (N(0, 0.1), seeded with the length
    of the file name)."""
    import numpy as np
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    sf.write(path, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000)
    return path


def write_librispeech(root: Path, seconds: tuple[float | None, float | None], tone=noise_flac) -> Path:
    """``root/LibriSpeech`` as released, with test-clean chapter 1089/134686: the transcripts of
    two utterances and, for each duration of ``seconds`` that is not None, that utterance's FLAC
    written by ``tone(path, seconds)``."""
    chapter = root / "LibriSpeech" / "test-clean" / "1089" / "134686"
    for index, length in enumerate(seconds):
        if length is not None:
            tone(chapter / f"1089-134686-000{index}.flac", length)
    (chapter / "1089-134686.trans.txt").write_text(
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW FOR DINNER\n1089-134686-0001 STUFF IT INTO YOU\n")
    return root / "LibriSpeech"


@pytest.fixture(scope="session")
def librispeech_writer():
    """``write(root, seconds, tone=noise_flac) -> root/LibriSpeech`` (see :func:`write_librispeech`)."""
    return write_librispeech


def single_error_line(code: int, err: str) -> str:
    """The single ``error:`` line of a failed command (no traceback)."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="session")
def one_error():
    """``one_error(code, err) -> str`` (see :func:`single_error_line`)."""
    return single_error_line


@pytest.fixture
def generated_prompts(monkeypatch) -> list[str]:
    """The prompts :class:`swv.infer.pipeline.Pipeline` generated for, in order (recorded while
    the real generation runs)."""
    from swv.infer.pipeline import Pipeline

    prompts: list[str] = []
    original = Pipeline.generate_batch

    def recording(self, waveforms, batch_prompts, settings, tasks=None):
        prompts.extend(batch_prompts)
        return original(self, waveforms, batch_prompts, settings, tasks)

    monkeypatch.setattr(Pipeline, "generate_batch", recording)
    return prompts


@pytest.fixture
def eval_cli(monkeypatch, capsys):
    """``run(args) -> (exit code, stdout, stderr)`` of ``swv eval ARGS`` in this process, through
    the CLI's own ``main`` (its error handling included)."""
    import typer

    import swv.cli.main as main_mod
    from swv.cli import eval_cmd

    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    app.command("eval")(eval_cmd.eval_cmd)
    app.command("noop")(lambda: None)
    monkeypatch.setattr(main_mod, "app", app)
    return _runner(lambda args: main_mod.main(["eval", *args]), capsys)


@pytest.fixture
def memory_rows():
    """``make(sizes, durations) -> StageDataset``: an in-memory row source of tasks of ``sizes``
    rows whose only column is ``duration`` (what the mixture sampler reads)."""
    import datasets

    from swv.data.stage_data import StageDataset

    def make(sizes: list[int], durations: list[float]) -> StageDataset:
        assert len(durations) == sum(sizes)
        names = [f"task{k}" for k in range(len(sizes))]
        return StageDataset(datasets.Dataset.from_dict({"duration": list(durations)}), names, list(sizes))

    return make


def _runner(main, capsys):
    """``run(args) -> (exit code, stdout, stderr)`` of ``main(args)`` (SystemExit mapped to its code)."""

    def run(args: list) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli(capsys):
    """``run(args) -> (exit code, stdout, stderr)`` through swv's real entry point (every command);
    a test module with a ``cli`` fixture of its own overrides this one."""
    from swv.cli.main import main

    return _runner(main, capsys)


@pytest.fixture
def infer_eval_cli(monkeypatch, capsys):
    """Like ``cli``, through swv's ``main`` with only ``infer`` and ``eval`` mounted (as in
    cli/main.py) and typer's pretty exceptions off."""
    import typer

    import swv.cli.main as main_mod
    from swv.cli import eval_cmd, infer_cmd

    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    app.command("infer")(infer_cmd.infer)
    app.command("eval")(eval_cmd.eval_cmd)
    monkeypatch.setattr(main_mod, "app", app)
    return _runner(main_mod.main, capsys)


def install_plugins(site: Path, *packages: Path) -> Path:
    """pip-install test plugin distributions (no dependencies) into the private site dir ``site``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), *map(str, packages)],
        check=True,
        capture_output=True,
    )
    return site


@pytest.fixture(scope="session")
def plugin_installer():
    """``install_plugins(site, *packages) -> site``."""
    return install_plugins


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def swv_serve_process(model_dir: Path, *flags: str, env: dict[str, str] | None = None,
                      ) -> Iterator[tuple[int, subprocess.Popen]]:
    """``swv serve MODEL --port P *flags`` (the installed command, ``HF_HUB_OFFLINE=1`` and ``env``
    added to the environment, output piped) as ``(port, process)`` once it accepts connections
    (uvicorn accepts them once the app has started); killed when the block ends if still running."""
    port = free_port()
    swv = Path(sys.executable).with_name("swv")
    proc = subprocess.Popen([str(swv), "serve", str(model_dir), "--port", str(port), *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "swv serve did not come up"
            time.sleep(0.3)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()


@pytest.fixture(scope="session")
def swv_serve():
    """:func:`swv_serve_process`: ``with swv_serve(model_dir, *flags, env=...) as (port, proc)``."""
    return swv_serve_process
