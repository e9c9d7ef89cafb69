"""The split-bf16 linear's oracle: the same bf16 halves and weight, the products in float64."""
from __future__ import annotations

import torch


def split_halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [..., K] float32 -> (x_hi, x_lo), each [M, K] bfloat16 contiguous (M = x.numel() / K),
    with x_hi = bf16(x) and x_lo = bf16(x - x_hi)."""
    flat = x.reshape(x.shape[:-1].numel(), x.shape[-1])
    hi = flat.to(torch.bfloat16).contiguous()
    lo = (flat - hi.float()).to(torch.bfloat16).contiguous()
    return hi, lo


def split_bf16_linear_reference(x: torch.Tensor, weight_bf16: torch.Tensor, bias: torch.Tensor | None = None,
                                halves: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(x_hi + x_lo) @ weight_bf16ᵀ (+ bias) in float64, returned as float32 [..., N]."""
    hi, lo = halves if halves is not None else split_halves(x)
    w = weight_bf16.double()
    out = hi.double() @ w.t() + lo.double() @ w.t()
    if bias is not None:
        out = out + bias.double()
    return out.float().reshape(*x.shape[:-1], weight_bf16.shape[0])
