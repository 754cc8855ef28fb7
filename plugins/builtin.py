"""Registers swv's built-in components through the same hook third-party plugins implement.

One row per component: kind, name, class and config model (import strings, so nothing here
imports torch), and the description ``swv plugins list`` shows.
"""

from __future__ import annotations

from swv.registry.components import Registry
from swv.registry.hookspecs import hookimpl

_CORPUS_OPTIONS = "swv.dataprep.corpora.base:CorpusOptions"
_TABLE_LAYOUT = "swv.dataprep.corpora.table:TableLayout"
_PRESET = "swv.eval.presets.base:BenchmarkPreset"

BUILTINS: tuple[tuple[str, str, str, str, str], ...] = (
    # kind, name, class, config model, description
    ("encoder", "whisper", "swv.encoders.whisper:WhisperEncoder", "swv.encoders.whisper:WhisperConfig",
     "Whisper encoder (frozen); 30 s padded or trimmed input"),
    ("encoder", "seamless", "swv.encoders.seamless:SeamlessEncoder", "swv.encoders.seamless:SeamlessConfig",
     "w2v-BERT 2.0 speech encoder of SeamlessM4T v2 (frozen)"),
    ("encoder", "ssl", "swv.encoders.ssl:SSLEncoder", "swv.encoders.ssl:SSLConfig",
     "wav2vec 2.0 / HuBERT / WavLM / data2vec-audio (transformers AutoModel, frozen); layer choice"),
    ("adapter", "alignment", "swv.adapters.alignment:AlignmentAdapter", "swv.adapters.alignment:AlignmentConfig",
     "Soundwave alignment adapter: pair frames, project, Transformer layer, CTC head"),
    ("adapter", "shrinking", "swv.adapters.shrinking:ShrinkingAdapter", "swv.adapters.shrinking:ShrinkingConfig",
     "Soundwave shrinking adapter: keep CTC peaks, cross-attend to all frames"),
    ("adapter", "utterance", "swv.adapters.utterance:UtteranceAdapter", "swv.adapters.utterance:UtteranceConfig",
     "Utterance token: pooled frame statistics -> one more audio token per clip (beyond the paper)"),
    ("adapter", "conv", "swv.adapters.conv:ConvAdapter", "swv.adapters.conv:ConvConfig",
     "Qwen2-Audio-style conv/pool downsampling x n baseline"),
    ("adapter", "stack", "swv.adapters.stack:StackAdapter", "swv.adapters.stack:StackConfig",
     "Frame stacking x n + MLP projection baseline"),
    ("adapter", "qformer", "swv.adapters.qformer:QFormerAdapter", "swv.adapters.qformer:QFormerConfig",
     "Window-level Q-Former (SALMONN style): learned queries per window of frames"),
    ("backbone", "llama", "swv.backbones.llama:LlamaBackbone", "swv.backbones.llama:LlamaConfig",
     "Llama-architecture causal LM (transformers), optional LoRA"),
    ("backbone", "qwen2", "swv.backbones.qwen2:Qwen2Backbone", "swv.backbones.qwen2:Qwen2Config",
     "Qwen2-architecture causal LM (transformers), optional LoRA"),
    ("corpus", "librispeech", "swv.dataprep.corpora.librispeech:LibriSpeechLayout", _CORPUS_OPTIONS,
     "LibriSpeech: <split>/<speaker>/<chapter>/*.trans.txt and .flac files (asr)"),
    ("corpus", "commonvoice", "swv.dataprep.corpora.commonvoice:CommonVoiceLayout", _CORPUS_OPTIONS,
     "Common Voice: <split>.tsv and clips/ (asr)"),
    ("corpus", "covost2", "swv.dataprep.corpora.covost2:CoVoST2Layout", _CORPUS_OPTIONS,
     "CoVoST 2: a covost_v2.<src>_<tgt>.tsv table and the Common Voice clips (st)"),
    ("corpus", "fleurs", "swv.dataprep.corpora.fleurs:FleursLayout", _CORPUS_OPTIONS,
     "FLEURS: one language folder with <split>.tsv and audio/<split>/ (asr)"),
    ("corpus", "vocalsound", "swv.dataprep.corpora.vocalsound:VocalSoundLayout", _CORPUS_OPTIONS,
     "VocalSound: audio_16k/<spk>_<n>_<label>.wav, splits in datafiles/ (vocal_sound)"),
    ("corpus", "airbench-foundation", "swv.dataprep.corpora.airbench:AirBenchFoundationLayout", _CORPUS_OPTIONS,
     "AIR-Bench foundation: Foundation/Foundation_meta.json and <task>_<dataset>/ clips (multiple choice)"),
    ("corpus", "airbench-chat", "swv.dataprep.corpora.airbench:AirBenchChatLayout", _CORPUS_OPTIONS,
     "AIR-Bench chat: Chat/Chat_meta.json and <task>_<dataset>/ clips (open questions)"),
    ("corpus", "meld", "swv.dataprep.corpora.meld:MeldLayout", _CORPUS_OPTIONS,
     "MELD: <split>_sent_emo.csv and dia<D>_utt<U>.wav clips (emotion)"),
    ("corpus", "mustc", "swv.dataprep.corpora.mustc:MuSTCLayout", _CORPUS_OPTIONS,
     "MuST-C en-xx: data/<split>/txt/<split>.yaml, .en, .xx and wav/ talks, cut into --clips (st)"),
    ("corpus", "mmau", "swv.dataprep.corpora.mmau:MMAULayout", _CORPUS_OPTIONS,
     "MMAU: its JSON list (mmau-test-mini.json) and the clips it names (multiple choice)"),
    ("corpus", "csv", _TABLE_LAYOUT, _CORPUS_OPTIONS, "a CSV table with an audio column and text/label columns"),
    ("corpus", "tsv", _TABLE_LAYOUT, _CORPUS_OPTIONS, "a TSV table with an audio column and text/label columns"),
    ("eval_preset", "librispeech-test-clean", _PRESET, "swv.eval.presets.librispeech:LibriSpeechTestClean",
     "LibriSpeech test-clean, WER (paper Table 5)"),
    ("eval_preset", "librispeech-test-other", _PRESET, "swv.eval.presets.librispeech:LibriSpeechTestOther",
     "LibriSpeech test-other, WER (paper Table 5)"),
    ("eval_preset", "covost2-en-de", _PRESET, "swv.eval.presets.covost2:CoVoST2EnDe",
     "CoVoST 2 En->De test, BLEU (paper Table 5)"),
    ("eval_preset", "covost2-en-zh", _PRESET, "swv.eval.presets.covost2:CoVoST2EnZh", "CoVoST 2 En->Zh test, BLEU"),
    ("eval_preset", "vocalsound", _PRESET, "swv.eval.presets.vocalsound:VocalSoundTest",
     "VocalSound test, multiple-choice accuracy (paper Table 5)"),
    ("eval_preset", "airbench-foundation-speech", _PRESET, "swv.eval.presets.airbench:AirBenchFoundationSpeech",
     "AIR-Bench foundation, the nine speech tasks, mean accuracy (paper Table 6)"),
    ("eval_preset", "airbench-foundation-sound", _PRESET, "swv.eval.presets.airbench:AirBenchFoundationSound",
     "AIR-Bench foundation, the four sound tasks, mean accuracy (paper Table 16)"),
    ("eval_preset", "airbench-foundation-music", _PRESET, "swv.eval.presets.airbench:AirBenchFoundationMusic",
     "AIR-Bench foundation, the six music tasks, mean accuracy (paper Table 16)"),
    ("eval_preset", "airbench-chat-speech", _PRESET, "swv.eval.presets.airbench:AirBenchChatSpeech",
     "AIR-Bench chat, speech questions, LLM-judge score 1-10 with --judge-url (paper Table 7)"),
    ("eval_preset", "meld", _PRESET, "swv.eval.presets.meld:MeldTest",
     "MELD test, emotion multiple-choice accuracy (paper Table 5)"),
    ("eval_preset", "mustc-en-nl", _PRESET, "swv.eval.presets.mustc:MuSTCEnNl",
     "MuST-C En->Nl tst-COMMON, zero-shot BLEU (paper Table 5)"),
    ("eval_preset", "mustc-en-it", _PRESET, "swv.eval.presets.mustc:MuSTCEnIt",
     "MuST-C En->It tst-COMMON, zero-shot BLEU (paper Table 5)"),
    ("eval_preset", "mustc-en-ro", _PRESET, "swv.eval.presets.mustc:MuSTCEnRo",
     "MuST-C En->Ro tst-COMMON, zero-shot BLEU (paper Table 5)"),
    ("eval_preset", "mustc-en-es", _PRESET, "swv.eval.presets.mustc:MuSTCEnEs",
     "MuST-C En->Es tst-COMMON, zero-shot BLEU (paper Table 5; its score is cut off in the paper's text)"),
    ("eval_preset", "mmau-test-mini", _PRESET, "swv.eval.presets.mmau:MMAUTestMini",
     "MMAU test-mini, speech and sound, mean accuracy (paper Table 12)"),
)


@hookimpl
def swv_register_components(registry: Registry) -> None:
    for kind, name, target, config, description in BUILTINS:
        registry.register(kind, name, target=target, config=config, description=description)
