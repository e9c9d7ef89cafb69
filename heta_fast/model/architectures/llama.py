"""Llama-shaped attention: separate q/k/v/o projections under ``model.model.layers[i].self_attn``.

One map serves every family whose attention differs from Llama's only in what happens *before*
the attention function (which the capture records as it is) or in the MLP:

- llama (Llama 1-3.x: llama3 rope scaling changes the rotary tables only), mistral (sliding
  window), qwen2 (q/k/v biases, read through ``v_proj``); SmolLM2 is a Llama;
- qwen3, qwen3_moe (per-head q/k RMSNorm before rotary), mixtral, qwen3_moe (mixture-of-experts
  MLPs), smollm3 (some layers without rotary), granite (the attention multiplier is the
  attention ``scaling``, the residual multiplier scales every layer alike; docs/method.md).

The window is what each family's attention module does: llama and granite apply none (whatever
the config says); the others pass ``sliding_window`` to the attention function by
:func:`config_window`.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .base import ArchitectureSpec, HeadLayout, linear_out_proj, split_heads


def _values(attn, layout: HeadLayout, x):
    # v_proj includes its bias when the model has one (Qwen2 does).
    return split_heads(attn.v_proj(x), layout.num_kv_heads, layout.head_dim)


def config_window(config, layer_idx: int) -> int | None:
    """transformers' rule for the families whose attention passes ``sliding_window`` to the
    attention function: ``config.sliding_window``, on the layers ``layer_types`` marks sliding
    (all of them without ``layer_types``, none with ``use_sliding_window`` False)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if layer_types[layer_idx] == "sliding_attention" else None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


# No window: LlamaAttention passes none and its mask ignores a ``sliding_window`` in the config
# (a map must say what the module does; the attention functions refuse any other window).
SPEC = ArchitectureSpec(
    name="llama",
    model_types=("llama",),
    layers=lambda model: list(model.model.layers),
    attention=lambda layer: layer.self_attn,
    values=_values,
    out_proj=lambda attn, layout: linear_out_proj(attn.o_proj.weight, layout),
)

# Same module map, own name (errors name the family), and the window their attention passes.
SHAPED = tuple(replace(SPEC, name=name, model_types=(name,), window=config_window)
               for name in ("mistral", "qwen2", "mixtral", "qwen3", "qwen3_moe", "smollm3"))


def _granite_gain(layer):
    """Granite adds residual_multiplier · (attention output): a constant gain [d_model]."""
    d = layer.self_attn.o_proj.out_features
    return torch.full((d,), float(layer.residual_multiplier), dtype=layer.self_attn.o_proj.weight.dtype,
                      device=layer.self_attn.o_proj.weight.device)


# Llama's attention: no window.
GRANITE = replace(SPEC, name="granite", model_types=("granite",), post_attention_gain=_granite_gain)
