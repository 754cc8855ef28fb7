"""Registers the three components. Kept free of torch imports: listing plugins stays fast."""

import swv


@swv.hookimpl
def swv_register_components(registry):
    registry.register(
        "encoder",
        "tp-spectrum",
        target="swv_third_party.encoder:SpectrumEncoder",
        config="swv_third_party.encoder:SpectrumConfig",
        description="log-magnitude spectrum of 10 ms frames, stride-2 projection (fixed random weights)",
    )
    registry.register(
        "adapter",
        "tp-gate",
        target="swv_third_party.adapter:GatedProjection",
        config="swv_third_party.adapter:GatedProjectionConfig",
        description="gated linear projection to its own width, lengths unchanged",
    )
    registry.register(
        "backbone",
        "tp-llama",
        target="swv_third_party.backbone:TinyLlama",
        config="swv_third_party.backbone:TinyLlamaConfig",
        description="a small Llama causal LM, randomly initialised or loaded from its own save",
    )
