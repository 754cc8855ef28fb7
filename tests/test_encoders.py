"""Tests of the built-in encoders (whisper, seamless) on tiny random models saved in tmp dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from transformers import (
    SeamlessM4TFeatureExtractor,
    SeamlessM4Tv2Config,
    SeamlessM4Tv2ForSpeechToText,
    Wav2Vec2BertConfig,
    Wav2Vec2BertForCTC,
    Wav2Vec2BertModel,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
)
from transformers import WhisperConfig as HFWhisperConfig
from transformers.models.whisper.modeling_whisper import (
    WhisperEncoder as HFWhisperEncoder,
)

from swv.core.errors import ComponentError, InputError
from swv.encoders.seamless import SeamlessConfig, SeamlessEncoder
from swv.encoders.whisper import WhisperConfig, WhisperEncoder
from swv.registry.plugins import load_plugins

SR = 16000
ATOL = 1e-5

WHISPER_KWARGS = dict(
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_layers=1,
    decoder_attention_heads=2,
    decoder_ffn_dim=64,
    num_mel_bins=80,
    max_source_positions=1500,
    max_target_positions=32,
    vocab_size=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=3,
    suppress_tokens=None,
    begin_suppress_tokens=None,
)

W2V_KWARGS = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    feature_projection_input_dim=160,
    conv_depthwise_kernel_size=5,
    left_max_position_embeddings=16,
    right_max_position_embeddings=4,
)

M4T_KWARGS = dict(
    vocab_size=64,
    char_vocab_size=32,
    t2u_vocab_size=32,
    hidden_size=32,
    encoder_layers=1,
    decoder_layers=1,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    speech_encoder_layers=2,
    speech_encoder_attention_heads=2,
    speech_encoder_intermediate_size=64,
    conv_depthwise_kernel_size=5,
    left_max_position_embeddings=16,
    right_max_position_embeddings=4,
    max_position_embeddings=64,
    t2u_max_position_embeddings=64,
)


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def _assert_same_weights(module: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert set(state) == set(reference)
    for key, value in state.items():
        assert torch.equal(value, reference[key]), key


def _encode_rows_alone(encoder, waves):
    rows = []
    for wav in waves:
        features, lengths = encoder.extract_features([wav])
        state = encoder(features, lengths)
        rows.append(state.embeds[0, : int(state.lengths[0])])
    return rows


def _drop_weight(src: Path, dst: Path, key: str) -> None:
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    del weights[key]
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------
# Whisper fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("whisper")
    hf_config = HFWhisperConfig(**WHISPER_KWARGS)
    torch.manual_seed(0)
    full = WhisperForConditionalGeneration(hf_config)
    full.save_pretrained(root / "full")
    torch.manual_seed(1)
    base = WhisperModel(hf_config)
    base.save_pretrained(root / "base")
    torch.manual_seed(2)
    encoder = HFWhisperEncoder(hf_config)
    encoder.save_pretrained(root / "encoder")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "encoder")
    encoder.save_pretrained(root / "sharded", max_shard_size="20KB")
    (root / "legacy").mkdir()
    shutil.copy(root / "encoder" / "config.json", root / "legacy" / "config.json")
    torch.save(encoder.state_dict(), root / "legacy" / "pytorch_model.bin")
    return {
        "root": root,
        "full": root / "full",
        "base": root / "base",
        "encoder": root / "encoder",
        "sharded": root / "sharded",
        "legacy": root / "legacy",
    }


@pytest.fixture(scope="module")
def whisper_pad(whisper_dirs: dict[str, Path]) -> WhisperEncoder:
    return WhisperEncoder(WhisperConfig(path=str(whisper_dirs["encoder"])))


@pytest.fixture(scope="module")
def whisper_trim(whisper_dirs: dict[str, Path]) -> WhisperEncoder:
    return WhisperEncoder(WhisperConfig(path=str(whisper_dirs["encoder"]), mode="trim"))


# ---------------------------------------------------------------------------------------------
# Whisper: loading
# ---------------------------------------------------------------------------------------------
def test_whisper_loads_full_and_base_checkpoints(whisper_dirs: dict[str, Path]) -> None:
    full = WhisperForConditionalGeneration.from_pretrained(whisper_dirs["full"])
    encoder = WhisperEncoder(WhisperConfig(path=str(whisper_dirs["full"])))
    _assert_same_weights(encoder.whisper, full.model.encoder.state_dict())
    assert next(iter(encoder.state_dict())).startswith("whisper.")
    assert "whisper.conv1.weight" in encoder.state_dict()

    base = WhisperModel.from_pretrained(whisper_dirs["base"])
    encoder = WhisperEncoder(WhisperConfig(path=str(whisper_dirs["base"])))
    _assert_same_weights(encoder.whisper, base.encoder.state_dict())
    # no preprocessor_config.json: the extractor is built from num_mel_bins
    assert encoder.feature_extractor.feature_size == 80
    assert encoder.sample_rate == SR and encoder.output_dim == 32 and encoder.fixed_num_frames == 3000


@pytest.mark.parametrize("kind", ["encoder", "sharded", "legacy"])
def test_whisper_loads_encoder_only_formats(whisper_dirs: dict[str, Path], kind: str) -> None:
    reference = load_file(str(whisper_dirs["encoder"] / "model.safetensors"))
    if kind == "sharded":
        assert (whisper_dirs["sharded"] / "model.safetensors.index.json").is_file()
    encoder = WhisperEncoder(WhisperConfig(path=str(whisper_dirs[kind])))
    _assert_same_weights(encoder.whisper, reference)


def test_whisper_local_dir_never_uses_the_hub(whisper_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hub must not be contacted for a local directory")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    encoder = WhisperEncoder(WhisperConfig(path=str(whisper_dirs["encoder"])))
    assert encoder.checkpoint_dir == whisper_dirs["encoder"].resolve()
    with pytest.raises(InputError, match="does not exist"):
        WhisperEncoder(WhisperConfig(path=str(whisper_dirs["root"] / "nope")))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("we are offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(InputError, match="could not be downloaded from the Hugging Face Hub"):
        WhisperEncoder(WhisperConfig(path="some-org/whisper-none"))


def test_whisper_missing_weight_is_an_error(whisper_dirs: dict[str, Path]) -> None:
    broken = whisper_dirs["root"] / "broken_encoder"
    _drop_weight(whisper_dirs["encoder"], broken, "layers.1.fc2.weight")
    with pytest.raises(InputError) as info:
        WhisperEncoder(WhisperConfig(path=str(broken)))
    message = str(info.value)
    assert str(broken) in message and "layers.1.fc2.weight" in message and "\n" not in message

    broken_full = whisper_dirs["root"] / "broken_full"
    _drop_weight(whisper_dirs["full"], broken_full, "model.encoder.conv2.bias")
    with pytest.raises(InputError, match=r"model\.encoder\.conv2\.bias"):
        WhisperEncoder(WhisperConfig(path=str(broken_full)))


def test_whisper_rejects_bad_checkpoints(whisper_dirs: dict[str, Path], tmp_path: Path) -> None:
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(whisper_dirs["encoder"] / "config.json", no_weights / "config.json")
    with pytest.raises(InputError, match="no weights found"):
        WhisperEncoder(WhisperConfig(path=str(no_weights)))

    other = tmp_path / "other"
    shutil.copytree(whisper_dirs["encoder"], other)
    data = json.loads((other / "config.json").read_text())
    data["model_type"] = "llama"
    (other / "config.json").write_text(json.dumps(data))
    with pytest.raises(ComponentError, match="model_type 'llama'"):
        WhisperEncoder(WhisperConfig(path=str(other)))

    wider = tmp_path / "wider"
    shutil.copytree(whisper_dirs["encoder"], wider)
    data = json.loads((wider / "config.json").read_text())
    data["d_model"] = 64
    (wider / "config.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="has shape"):
        WhisperEncoder(WhisperConfig(path=str(wider)))


# ---------------------------------------------------------------------------------------------
# Whisper: features and encoding
# ---------------------------------------------------------------------------------------------
def test_whisper_pad_to_30s_matches_transformers(whisper_dirs: dict[str, Path], whisper_pad: WhisperEncoder) -> None:
    waves = [_noise(1.0, 0), _noise(2.3, 1)]
    features, lengths = whisper_pad.extract_features(waves)
    assert features.shape == (2, 80, 3000) and features.dtype == torch.float32
    assert lengths.tolist() == [100, 230]
    expected_features = WhisperFeatureExtractor(feature_size=80)(waves, sampling_rate=SR, return_tensors="pt")
    assert torch.allclose(features, expected_features["input_features"])

    reference = HFWhisperEncoder.from_pretrained(whisper_dirs["encoder"]).eval()
    state = whisper_pad(features, lengths)
    with torch.no_grad():
        expected = reference(features).last_hidden_state
    assert state.embeds.shape == (2, 1500, 32)
    assert torch.allclose(state.embeds, expected, atol=ATOL)
    assert state.lengths.tolist() == [1500, 1500]
    assert whisper_pad.output_lengths(lengths).tolist() == [1500, 1500]


def test_whisper_trim_batch_equals_single_clips(whisper_pad: WhisperEncoder, whisper_trim: WhisperEncoder) -> None:
    waves = [_noise(0.73, 2), _noise(1.9, 3)]
    features, lengths = whisper_trim.extract_features(waves)
    assert lengths.tolist() == [73, 190]
    assert features.shape == (2, 80, 190)
    # each row is the 30 s-padded features cropped
    padded, _ = whisper_pad.extract_features(waves)
    assert torch.allclose(features, padded[..., :190], atol=1e-6)

    state = whisper_trim(features, lengths)
    assert state.embeds.shape == (2, 95, 32)
    assert state.lengths.tolist() == [37, 95]
    for row, alone in enumerate(_encode_rows_alone(whisper_trim, waves)):
        n = int(state.lengths[row])
        assert alone.shape[0] == n
        assert torch.allclose(state.embeds[row, :n], alone, atol=ATOL)


def test_whisper_trim_on_full_clip_equals_pad_to_30s(whisper_pad: WhisperEncoder, whisper_trim: WhisperEncoder) -> None:
    wav = [_noise(30.0, 4)]
    trim_features, trim_lengths = whisper_trim.extract_features(wav)
    pad_features, pad_lengths = whisper_pad.extract_features(wav)
    assert trim_features.shape == pad_features.shape == (1, 80, 3000)
    assert torch.equal(trim_features, pad_features) and trim_lengths.tolist() == [3000]
    trimmed = whisper_trim(trim_features, trim_lengths)
    padded = whisper_pad(pad_features, pad_lengths)
    assert trimmed.lengths.tolist() == [1500]
    assert torch.allclose(trimmed.embeds, padded.embeds, atol=ATOL)


def test_whisper_output_lengths_match_frames(whisper_trim: WhisperEncoder) -> None:
    reference = HFWhisperEncoder(whisper_trim.whisper.config)
    feature_lengths = torch.arange(1, 3001)
    assert torch.equal(
        whisper_trim.output_lengths(feature_lengths), reference._get_feat_extract_output_lengths(feature_lengths)
    )
    for seconds in (0.05, 0.31, 1.0, 2.57):
        features, lengths = whisper_trim.extract_features([_noise(seconds, 5)])
        state = whisper_trim(features, lengths)
        assert state.embeds.shape[1] == int(whisper_trim.output_lengths(lengths)[0]) == int(state.lengths[0])


def test_whisper_rejects_bad_audio(whisper_pad: WhisperEncoder, whisper_trim: WhisperEncoder) -> None:
    for encoder in (whisper_pad, whisper_trim):
        with pytest.raises(InputError, match="waveform 1: 30.50 s is longer"):
            encoder.extract_features([_noise(1.0, 0), _noise(30.5, 1)])
    with pytest.raises(InputError, match="1-D mono"):
        whisper_pad.extract_features([np.zeros((2, 1600), dtype=np.float32)])
    with pytest.raises(InputError, match="empty"):
        whisper_pad.extract_features([np.zeros(0, dtype=np.float32)])
    with pytest.raises(InputError, match="exactly 3000 frames"):
        whisper_pad(torch.zeros(1, 80, 200), torch.tensor([200]))
    # tensors are accepted as well as arrays; a clip shorter than a hop still has one frame
    features, lengths = whisper_trim.extract_features([torch.from_numpy(_noise(0.005, 6))])
    assert lengths.tolist() == [1] and features.shape == (1, 80, 2)


def test_whisper_frozen_and_trainable(whisper_dirs: dict[str, Path], whisper_trim: WhisperEncoder) -> None:
    assert not any(p.requires_grad for p in whisper_trim.parameters())
    whisper_trim.train()
    assert not whisper_trim.training and not whisper_trim.whisper.training
    features, lengths = whisper_trim.extract_features([_noise(0.5, 7)])
    state = whisper_trim(features, lengths)
    assert not state.embeds.requires_grad

    trainable = WhisperEncoder(WhisperConfig(path=str(whisper_dirs["encoder"]), mode="trim", frozen=False))
    assert any(p.requires_grad for p in trainable.parameters())
    state = trainable(features, lengths)
    state.embeds.sum().backward()
    assert trainable.whisper.conv1.weight.grad is not None


def test_whisper_random_init_dtype_and_identity(whisper_trim: WhisperEncoder) -> None:
    kwargs = {"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32}
    encoder = WhisperEncoder(WhisperConfig(random_init=kwargs, mode="trim", dtype="bfloat16"))
    assert encoder.checkpoint_dir is None and encoder.output_dim == 16 and encoder.fixed_num_frames is None
    assert encoder.whisper.conv1.weight.dtype == torch.bfloat16
    features, lengths = encoder.extract_features([_noise(0.4, 8)])
    state = encoder(features, lengths)
    assert state.embeds.shape == (1, 20, 16) and state.embeds.dtype == torch.bfloat16
    identity = encoder.identity()
    assert identity["checkpoint"].startswith("random_init:sha256:")
    assert identity["mode"] == "trim" and identity["dtype"] == "bfloat16" and identity["num_mel_bins"] == 80
    assert identity == WhisperEncoder(WhisperConfig(random_init=dict(kwargs), mode="trim", dtype="bfloat16")).identity()
    loaded = whisper_trim.identity()
    assert loaded["checkpoint"] == str(whisper_trim.checkpoint_dir)
    assert loaded["sampling_rate"] == SR and loaded["hop_length"] == 160 and loaded["dtype"] == "float32"

    with pytest.raises(ComponentError, match="d_modle"):
        WhisperEncoder(WhisperConfig(random_init={"d_modle": 16}))
    with pytest.raises(ComponentError, match="pad_to_30s"):
        WhisperEncoder(WhisperConfig(random_init={**kwargs, "max_source_positions": 100}))


def test_whisper_config_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'path'"):
        WhisperConfig()
    with pytest.raises(ValidationError, match="exactly one of 'path'"):
        WhisperConfig(path="x", random_init={"d_model": 8})
    with pytest.raises(ValidationError, match="extra"):
        WhisperConfig(path="x", layers=3)
    with pytest.raises(ValidationError):
        WhisperConfig(path="x", mode="stretch")
    with pytest.raises(ValidationError):
        WhisperConfig(path="x", dtype="float64")


def test_encoders_build_through_the_registry() -> None:
    registry = load_plugins(autoload=False).registry
    tiny = {"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2}
    whisper = registry.build("encoder", {"name": "whisper", "random_init": tiny})
    assert isinstance(whisper, WhisperEncoder)
    seamless = registry.build("encoder", {"name": "seamless", "random_init": W2V_KWARGS, "layer": 1})
    assert isinstance(seamless, SeamlessEncoder) and seamless.layer == 1


# ---------------------------------------------------------------------------------------------
# Seamless fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seamless_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seamless")
    torch.manual_seed(0)
    w2v = Wav2Vec2BertModel(Wav2Vec2BertConfig(**W2V_KWARGS))
    w2v.save_pretrained(root / "w2v")
    SeamlessM4TFeatureExtractor(padding_value=1.0).save_pretrained(root / "w2v")
    torch.manual_seed(1)
    Wav2Vec2BertForCTC(Wav2Vec2BertConfig(**W2V_KWARGS, vocab_size=12)).save_pretrained(root / "ctc")
    torch.manual_seed(2)
    SeamlessM4Tv2ForSpeechToText(SeamlessM4Tv2Config(**M4T_KWARGS)).save_pretrained(root / "m4t")
    return {"root": root, "w2v": root / "w2v", "ctc": root / "ctc", "m4t": root / "m4t"}


@pytest.fixture(scope="module")
def seamless_w2v(seamless_dirs: dict[str, Path]) -> SeamlessEncoder:
    return SeamlessEncoder(SeamlessConfig(path=str(seamless_dirs["w2v"])))


@pytest.fixture(scope="module")
def seamless_m4t(seamless_dirs: dict[str, Path]) -> SeamlessEncoder:
    return SeamlessEncoder(SeamlessConfig(path=str(seamless_dirs["m4t"])))


def _mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    return (torch.arange(num_frames)[None, :] < lengths[:, None]).long()


# ---------------------------------------------------------------------------------------------
# Seamless
# ---------------------------------------------------------------------------------------------
def test_seamless_w2v_bert_loads_and_matches_transformers(
    seamless_dirs: dict[str, Path], seamless_w2v: SeamlessEncoder
) -> None:
    reference = Wav2Vec2BertModel.from_pretrained(seamless_dirs["w2v"]).eval()
    expected_state = {k: v for k, v in reference.state_dict().items() if k != "masked_spec_embed"}
    _assert_same_weights(seamless_w2v.speech_encoder, expected_state)
    assert seamless_w2v.architecture == "wav2vec2-bert"
    assert seamless_w2v.feature_extractor.padding_value == 1.0  # read from preprocessor_config.json
    assert seamless_w2v.feature_time_axis == 1 and seamless_w2v.output_dim == 32 and seamless_w2v.sample_rate == SR

    features, lengths = seamless_w2v.extract_features([_noise(1.0, 0)])
    assert features.shape == (1, 49, 160) and lengths.tolist() == [49]
    state = seamless_w2v(features, lengths)
    with torch.no_grad():
        expected = reference(features, attention_mask=_mask(lengths, 49)).last_hidden_state
    assert state.embeds.shape == (1, 49, 32) and state.lengths.tolist() == [49]
    assert torch.allclose(state.embeds, expected, atol=ATOL)

    ctc = Wav2Vec2BertForCTC.from_pretrained(seamless_dirs["ctc"])
    from_ctc = SeamlessEncoder(SeamlessConfig(path=str(seamless_dirs["ctc"])))
    expected_state = {k: v for k, v in ctc.wav2vec2_bert.state_dict().items() if k != "masked_spec_embed"}
    _assert_same_weights(from_ctc.speech_encoder, expected_state)


def test_seamless_batch_equals_single_clips(seamless_w2v: SeamlessEncoder, seamless_m4t: SeamlessEncoder) -> None:
    waves = [_noise(0.61, 1), _noise(1.43, 2), _noise(1.0, 3)]
    for encoder in (seamless_w2v, seamless_m4t):
        features, lengths = encoder.extract_features(waves)
        state = encoder(features, lengths)
        assert torch.equal(state.lengths, encoder.output_lengths(lengths))
        for row, alone in enumerate(_encode_rows_alone(encoder, waves)):
            n = int(state.lengths[row])
            assert alone.shape[0] == n
            assert torch.allclose(state.embeds[row, :n], alone, atol=ATOL)


def test_seamless_m4t_v2_speech_encoder(seamless_dirs: dict[str, Path], seamless_m4t: SeamlessEncoder) -> None:
    full = SeamlessM4Tv2ForSpeechToText.from_pretrained(seamless_dirs["m4t"]).eval()
    _assert_same_weights(seamless_m4t.speech_encoder, full.speech_encoder.state_dict())
    assert seamless_m4t.architecture == "seamless_m4t_v2"
    features, lengths = seamless_m4t.extract_features([_noise(1.0, 4)])
    assert lengths.tolist() == [49]
    state = seamless_m4t(features, lengths)
    with torch.no_grad():
        expected = full.speech_encoder(features, attention_mask=_mask(lengths, 49)).last_hidden_state
    # the length adaptor (kernel 8, stride 8) shortens 49 frames to 49 // 8 + 1
    assert state.embeds.shape == expected.shape == (1, 7, 32)
    assert state.lengths.tolist() == seamless_m4t.output_lengths(lengths).tolist() == [7]
    assert torch.allclose(state.embeds, expected, atol=ATOL)

    layered = SeamlessEncoder(SeamlessConfig(path=str(seamless_dirs["m4t"]), layer=1))
    assert len(layered.speech_encoder.encoder.layers) == 1
    with torch.no_grad():
        hidden = full.speech_encoder(
            features, attention_mask=_mask(lengths, 49), output_hidden_states=True
        ).hidden_states
    layer_state = layered(features, lengths)
    assert layer_state.embeds.shape == (1, 49, 32) and layer_state.lengths.tolist() == [49]
    assert torch.allclose(layer_state.embeds, hidden[1], atol=ATOL)


@pytest.mark.parametrize("layer", [0, 1, 2, -1, -3])
def test_seamless_layer_selection(seamless_dirs: dict[str, Path], layer: int) -> None:
    encoder = SeamlessEncoder(SeamlessConfig(path=str(seamless_dirs["w2v"]), layer=layer))
    assert encoder.layer == layer % 3
    assert len(encoder.speech_encoder.encoder.layers) == layer % 3
    reference = Wav2Vec2BertModel.from_pretrained(seamless_dirs["w2v"]).eval()
    features, lengths = encoder.extract_features([_noise(0.8, 5)])
    with torch.no_grad():
        hidden = reference(features, attention_mask=_mask(lengths, features.shape[1]), output_hidden_states=True)
    state = encoder(features, lengths)
    assert torch.allclose(state.embeds, hidden.hidden_states[layer], atol=ATOL)
    assert encoder.identity()["layer"] == layer % 3


def test_seamless_length_adaptor(seamless_dirs: dict[str, Path]) -> None:
    torch.manual_seed(3)
    adaptor = {"add_adapter": True, "num_adapter_layers": 2, "output_hidden_size": 24}
    encoder = SeamlessEncoder(SeamlessConfig(random_init={**W2V_KWARGS, **adaptor}))
    assert encoder.output_dim == 24
    reference = Wav2Vec2BertModel(encoder.speech_encoder.config).eval()
    reference.load_state_dict(encoder.speech_encoder.state_dict())
    waves = [_noise(0.9, 6), _noise(1.37, 7)]
    features, lengths = encoder.extract_features(waves)
    state = encoder(features, lengths)
    # 0.9 s gives 44 stacked frames; 1.37 s gives 67 valid frames padded to 68 by the extractor
    assert lengths.tolist() == [44, 67]
    for row, wav in enumerate(waves):
        alone_features, alone_lengths = encoder.extract_features([wav])
        alone = encoder(alone_features, alone_lengths)
        n = int(alone.lengths[0])
        # transformers on exactly the valid frames (no padding at all) is the reference
        with torch.no_grad():
            expected = reference(alone_features[:, : int(alone_lengths[0])]).last_hidden_state
        assert expected.shape[1] == n
        assert torch.allclose(alone.embeds[:, :n], expected, atol=ATOL)
        assert n == int(state.lengths[row])
        assert torch.allclose(state.embeds[row, :n], alone.embeds[0, :n], atol=ATOL)


def test_seamless_errors(seamless_dirs: dict[str, Path], seamless_w2v: SeamlessEncoder, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    _drop_weight(seamless_dirs["w2v"], broken, "encoder.layers.0.ffn1.intermediate_dense.weight")
    with pytest.raises(InputError) as info:
        SeamlessEncoder(SeamlessConfig(path=str(broken)))
    assert str(broken) in str(info.value) and "encoder.layers.0.ffn1.intermediate_dense.weight" in str(info.value)

    broken_m4t = tmp_path / "broken_m4t"
    _drop_weight(seamless_dirs["m4t"], broken_m4t, "speech_encoder.inner_layer_norm.weight")
    with pytest.raises(InputError, match=r"speech_encoder\.inner_layer_norm\.weight"):
        SeamlessEncoder(SeamlessConfig(path=str(broken_m4t)))

    v1 = tmp_path / "v1"
    shutil.copytree(seamless_dirs["w2v"], v1)
    data = json.loads((v1 / "config.json").read_text())
    data["model_type"] = "seamless_m4t"
    (v1 / "config.json").write_text(json.dumps(data))
    with pytest.raises(ComponentError, match="SeamlessM4T v1"):
        SeamlessEncoder(SeamlessConfig(path=str(v1)))

    with pytest.raises(ComponentError, match="out of range for a 2-layer encoder"):
        SeamlessEncoder(SeamlessConfig(path=str(seamless_dirs["w2v"]), layer=3))
    with pytest.raises(ComponentError, match="unknown Wav2Vec2BertConfig field"):
        SeamlessEncoder(SeamlessConfig(random_init={**W2V_KWARGS, "hidden_sise": 8}))
    with pytest.raises(InputError, match="too short"):
        seamless_w2v.extract_features([_noise(0.02, 8)])
    with pytest.raises(InputError, match=r"\[B, T, 160\]"):
        seamless_w2v(torch.zeros(1, 80, 10), torch.tensor([10]))

    with pytest.raises(ValidationError, match="exactly one of 'path'"):
        SeamlessConfig()
    with pytest.raises(ValidationError, match="exactly one of 'path'"):
        SeamlessConfig(path="x", random_init={})
    with pytest.raises(ValidationError, match="extra"):
        SeamlessConfig(path="x", mode="trim")


def test_seamless_frozen_trainable_and_identity(seamless_dirs: dict[str, Path], seamless_w2v: SeamlessEncoder) -> None:
    assert not any(p.requires_grad for p in seamless_w2v.parameters())
    features, lengths = seamless_w2v.extract_features([_noise(0.5, 9)])
    assert not seamless_w2v(features, lengths).embeds.requires_grad

    trainable = SeamlessEncoder(SeamlessConfig(path=str(seamless_dirs["w2v"]), frozen=False))
    trainable.train()
    assert trainable.training
    trainable(features, lengths).embeds.sum().backward()
    assert trainable.speech_encoder.feature_projection.projection.weight.grad is not None

    identity = seamless_w2v.identity()
    assert identity["checkpoint"] == str(seamless_w2v.checkpoint_dir)
    assert identity["architecture"] == "wav2vec2-bert" and identity["layer"] is None
    assert identity["num_mel_bins"] == 80 and identity["stride"] == 2 and identity["dtype"] == "float32"
