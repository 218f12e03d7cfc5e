"""What a run computes in: the weights' dtype (`dtype: auto`) and Lightning's precision when none is
given, both following what the hardware computes in bf16 natively. Where it does (a GPU with bf16,
a CPU with AVX512-BF16 or AMX) runs train in bf16-mixed, as the field does: float32 master weights
and optimizer state for what the optimizer steps, bf16 matmuls, frozen weights stored in bf16.
Elsewhere (a CPU with AVX2 only emulates bf16, ~100x slower) everything is float32."""

from __future__ import annotations

from typing import Literal

import torch

DType = Literal["auto", "bfloat16", "float32", "float16"]


def native_bf16() -> bool:
    """Whether the hardware computes in bfloat16 natively: a GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (without them a bf16 matmul is ~100x slower than float32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported()


def resolve_dtype(dtype: DType, trained_in_mixed_precision: bool = False) -> torch.dtype:
    """"auto" picks bfloat16 where the hardware runs it natively (it is ~4x faster than float32 on
    AVX512-BF16 CPUs), else float32; but weights an optimizer steps under mixed precision
    (`trained_in_mixed_precision`) are float32 masters, computed in bf16 by autocast."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if trained_in_mixed_precision:
        return torch.float32
    return torch.bfloat16 if native_bf16() else torch.float32


def default_precision() -> str:
    """The Lightning precision a run takes unless told: `bf16-mixed` where the hardware computes in
    bf16 natively (float32 master weights and optimizer state, bf16 matmuls), else `32-true`."""
    return "bf16-mixed" if native_bf16() else "32-true"
