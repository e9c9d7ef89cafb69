"""What an architecture's module map gives the model layer, and the head layout.

A module map says where the decoder layers, their attention modules and the projections live,
and how to read values and the per-head output projection from them. Adding an architecture
means one :class:`ArchitectureSpec` passed to ``register_architecture``; no if-chains elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...errors import ConfigError


@dataclass(frozen=True)
class HeadLayout:
    """Head counts of one model. Query head h reads KV head ``h // (num_heads // num_kv_heads)``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_model: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def kv_head_of(self, h: int) -> int:
        return h // self.group_size


@dataclass(frozen=True)
class ArchitectureSpec:
    """Per-architecture module map.

    - ``layers(model)``: the decoder layers, bottom to top.
    - ``attention(layer)``: the attention module; its input is the *normalised* attention input.
    - ``values(attn, layout, x)``: x [B, n, d_model] -> values [B, n, num_kv_heads, head_dim], bias included.
    - ``out_proj(attn, layout)``: per-head output projection [num_heads, head_dim, d_model], oriented so
      that head h's contribution to the residual stream is ``v @ out_proj[h]`` (the output
      projection's bias is shared by all heads and belongs to no token; it is not included).
    - ``window(config, layer_idx)``: sliding-attention window of that layer, or None (config is
      the text model's config, ``config.get_text_config()``): the window the layer's attention
      module applies, which is the ``sliding_window`` it passes to the attention function (heta's
      recording and packed attention refuse a module that passes another one, or none where the
      map declares one).
    - ``post_attention_gain(layer)``: for a layer that normalises the attention output before
      adding it to the residual stream (Gemma-2/3, OLMo-2), the norm's elementwise gain [d_model]
      (what the flow gate's value norm linearises the norm by, docs/method.md §1); None otherwise.
    """

    name: str
    model_types: tuple[str, ...]
    layers: Callable[[nn.Module], list[nn.Module]]
    attention: Callable[[nn.Module], nn.Module]
    values: Callable[[nn.Module, HeadLayout, torch.Tensor], torch.Tensor]
    out_proj: Callable[[nn.Module, HeadLayout], torch.Tensor]
    window: Callable[[object, int], int | None] = lambda config, layer_idx: None
    post_attention_gain: Callable[[nn.Module], torch.Tensor | None] = lambda layer: None

    def __post_init__(self):
        # Checked when the map is built (``dataclasses.replace`` included): a plain string as
        # model_types would otherwise register each of its letters.
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"ArchitectureSpec.name must be a non-empty string; got {self.name!r}")
        types = self.model_types
        if not isinstance(types, (tuple, list)) or not types \
                or not all(isinstance(t, str) and t for t in types):
            raise ConfigError(f"ArchitectureSpec {self.name!r}: model_types must be a non-empty tuple or list of "
                              f"non-empty strings (transformers model_type values); got {types!r}")
        object.__setattr__(self, "model_types", tuple(types))
        for field in ("layers", "attention", "values", "out_proj", "window", "post_attention_gain"):
            if not callable(getattr(self, field)):
                raise ConfigError(f"ArchitectureSpec {self.name!r}: {field} must be callable; "
                                  f"got {getattr(self, field)!r}")


def head_layout_from_config(config) -> HeadLayout:
    """Head counts from a transformers config (GPT-2/GPT-J names map through attribute_map; a
    multimodal config's sizes are its text config's)."""
    config = text_config(config)
    d_model = int(config.hidden_size)
    num_heads = int(config.num_attention_heads)
    num_kv = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or d_model // num_heads
    return HeadLayout(num_heads=num_heads, num_kv_heads=int(num_kv), head_dim=int(head_dim), d_model=d_model)


def text_config(config):
    """The config of the language model: ``config`` itself, or a multimodal config's text config."""
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def linear_out_proj(weight: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """nn.Linear weight [d_model, H*dh] (y = x W^T) -> per-head [H, dh, d_model]."""
    return weight.t().reshape(layout.num_heads, layout.head_dim, weight.shape[0])


def split_heads(v: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[B, n, num_heads*head_dim] -> [B, n, num_heads, head_dim]."""
    return v.reshape(*v.shape[:-1], num_heads, head_dim)
