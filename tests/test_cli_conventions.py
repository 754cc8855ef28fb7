"""Conventions users know from other tools: ``-h`` everywhere, the usual dtype short names."""

from __future__ import annotations

import pytest
import torch

from swv.core.dtypes import canonical_dtype, torch_dtype


@pytest.mark.parametrize("args", [["-h"], ["infer", "-h"], ["data", "manifest", "-h"], ["recipe", "validate", "-h"]])
def test_short_help_everywhere(cli, args: list[str]) -> None:
    code, out, err = cli(args)
    assert code == 0, err
    assert "Usage:" in out and "--help" in out


@pytest.mark.parametrize(("name", "dtype"), [("bf16", torch.bfloat16), ("BF16", torch.bfloat16), ("fp16", torch.float16),
                                             ("half", torch.float16), ("fp32", torch.float32), ("float32", torch.float32)])
def test_dtype_aliases(name: str, dtype: torch.dtype) -> None:
    assert torch_dtype(name) is dtype


def test_unknown_dtype_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="bf16"):
        canonical_dtype("int4")


def test_pipeline_takes_an_alias() -> None:
    from swv.core.errors import UsageError
    from swv.infer.pipeline import _parse_dtype

    assert _parse_dtype("bf16") is torch.bfloat16
    with pytest.raises(UsageError, match="dtype: unknown dtype 'int4'"):
        _parse_dtype("int4")


def test_written_weights_take_the_aliases_too(cli, tmp_path) -> None:
    """``--dtype`` of the commands that write weights (convert, import) takes the same names as
    infer's; an unknown one is one line naming the accepted names, before anything is read."""
    from swv.cli.options import weight_dtype

    assert weight_dtype("bf16") == "bfloat16" and weight_dtype("half") == "float16" and weight_dtype(None) is None
    for args in (["convert", "gguf", tmp_path / "x.gguf", tmp_path / "out"],
                 ["convert", "whisper-ct2", tmp_path / "ct2", tmp_path / "out"],
                 ["import", "soundwave", tmp_path / "src", tmp_path / "out"]):
        code, _, err = cli([*args, "--dtype", "bf17"])
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and lines == [
            "error: --dtype: unknown dtype 'bf17', expected one of float32, float16, bfloat16, fp32, f32, float, fp16, "
            "f16, half, bf16"], err


@pytest.mark.parametrize(("value", "expected"), [("bf16", "bf16"), ("bfloat16", "bf16"), ("half", "fp16"),
                                                 ("float16", "fp16"), ("fp32", "no"), ("no", "no"), (False, "no")])
def test_recipe_precision_takes_dtype_names(value, expected) -> None:
    from swv.recipes.loader import load_recipe

    loaded = load_recipe("tiny", overrides=[f"precision={str(value).lower() if value is not False else 'no'}"])
    assert loaded.recipe.precision == expected
