"""GPT-2: fused c_attn and c_proj as Conv1D (weight [in, out], y = x W + b), absolute positions."""
from __future__ import annotations

from .base import ArchitectureSpec, HeadLayout, split_heads


def _values(attn, layout: HeadLayout, x):
    d = layout.num_heads * layout.head_dim
    w = attn.c_attn.weight[:, 2 * d : 3 * d]  # Conv1D: [d_model, 3*d], columns q | k | v
    b = attn.c_attn.bias[2 * d : 3 * d]
    return split_heads(x @ w + b, layout.num_kv_heads, layout.head_dim)


def _out_proj(attn, layout: HeadLayout):
    w = attn.c_proj.weight  # Conv1D: [H*dh (in), d_model (out)]
    return w.reshape(layout.num_heads, layout.head_dim, w.shape[1])


SPEC = ArchitectureSpec(
    name="gpt2",
    model_types=("gpt2",),
    layers=lambda model: list(model.transformer.h),
    attention=lambda layer: layer.attn,
    values=_values,
    out_proj=_out_proj,
)
