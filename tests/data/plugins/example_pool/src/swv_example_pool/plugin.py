"""Registers the adapter. Kept free of torch imports: listing plugins stays fast."""

import swv


@swv.hookimpl
def swv_register_components(registry):
    registry.register(
        "adapter",
        "example-pool",
        target="swv_example_pool.adapter:ExamplePool",
        config="swv_example_pool.adapter:ExamplePoolConfig",
        description="average-pool frames by n, then project to the LLM width",
    )
