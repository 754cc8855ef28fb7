"""Registers the corpus layout and the preset (import strings only: listing plugins stays fast)."""

import swv


@swv.hookimpl
def swv_register_components(registry):
    registry.register(
        "corpus",
        "toy-folder",
        target="swv_toy_benchmark.corpus:ToyFolder",
        config="swv_toy_benchmark.corpus:ToyFolderOptions",
        description="<root>/<split>/prompts.txt lines '<stem>|<text>' and <stem>.wav beside it (asr)",
    )
    registry.register(
        "eval_preset",
        "toy-digits",
        target="swv.eval.presets.base:BenchmarkPreset",
        config="swv_toy_benchmark.preset:ToyDigits",
        description="spoken digits in the toy-folder layout, WER with the basic normaliser",
    )
