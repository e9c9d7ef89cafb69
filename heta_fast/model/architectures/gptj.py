"""GPT-J: separate q/k/v/out_proj (no biases), rotary positions, attention and MLP in parallel."""
from __future__ import annotations

from .base import ArchitectureSpec, HeadLayout, linear_out_proj, split_heads


def _values(attn, layout: HeadLayout, x):
    return split_heads(attn.v_proj(x), layout.num_kv_heads, layout.head_dim)


SPEC = ArchitectureSpec(
    name="gptj",
    model_types=("gptj",),
    layers=lambda model: list(model.transformer.h),
    attention=lambda layer: layer.attn,
    values=_values,
    out_proj=lambda attn, layout: linear_out_proj(attn.out_proj.weight, layout),
)
