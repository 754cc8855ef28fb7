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
