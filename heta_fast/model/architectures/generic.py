"""The generic path: a module map discovered from a short list of known layouts.

Most decoder-only models in transformers route attention through its attention interface and
name their projections one of a few ways. For a model whose ``model_type`` has no registered
map, :func:`discover` finds

- the decoder layers: the ``nn.ModuleList`` with ``num_hidden_layers`` entries each holding an
  attention module named one of :data:`ATTENTION_NAMES`;
- the projections, from :data:`LAYOUTS` (separate q/k/v/o; fused ``qkv_proj``; fused
  ``query_key_value`` per head (GPT-NeoX) or as q | k | v blocks; GPT-2's ``c_attn``/``c_proj``;
  ``Wqkv``/``out_proj``),

and accepts the first candidate that verifies itself on the model (verify.py). The window rule is
transformers' (``sliding_window`` and ``layer_types``), or none when the attention modules pass no
window (a config key the family ignores); no post-attention norm is assumed (the verification
refuses a model whose attention output does not reach the residual stream as it is).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...errors import UnsupportedArchitectureError
from .base import ArchitectureSpec, HeadLayout, split_heads, text_config
from .llama import config_window

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "Wo")


def _is_conv1d(mod: nn.Module) -> bool:
    """GPT-2's Conv1D: weight [in, out], y = x W + b."""
    return type(mod).__name__ == "Conv1D"


def _rows(mod: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Output features ``index`` of a Linear or Conv1D applied to x [..., d_in], bias included."""
    w = mod.weight[:, index].t() if _is_conv1d(mod) else mod.weight[index]
    y = x @ w.t()
    return y if mod.bias is None else y + mod.bias[index]


def _out_proj(mod: nn.Module, layout: HeadLayout) -> torch.Tensor:
    w = mod.weight if _is_conv1d(mod) else mod.weight.t()  # [H*dh, d_model]
    return w.reshape(layout.num_heads, layout.head_dim, w.shape[1])


@dataclass(frozen=True)
class Layout:
    """A projection layout: the fused or separate module holding the values, and where."""

    name: str
    value_module: str
    value_rows: Callable[[HeadLayout], torch.Tensor]  # output features of the values, [Hkv*dh] in head order


def _block(first: Callable[[HeadLayout], int]):
    return lambda lay: torch.arange(first(lay), first(lay) + lay.num_kv_heads * lay.head_dim)


def _after_qk(lay: HeadLayout) -> int:
    return (lay.num_heads + lay.num_kv_heads) * lay.head_dim


def _per_head(lay: HeadLayout) -> torch.Tensor:
    dh = lay.head_dim
    return torch.cat([torch.arange(h * 3 * dh + 2 * dh, (h + 1) * 3 * dh) for h in range(lay.num_kv_heads)])


LAYOUTS = (
    Layout("separate q/k/v projections", "v_proj", _block(lambda lay: 0)),
    Layout("fused qkv_proj (q | k | v)", "qkv_proj", _block(_after_qk)),
    Layout("fused query_key_value interleaved per head", "query_key_value", _per_head),
    Layout("fused query_key_value (q | k | v)", "query_key_value",
           _block(_after_qk)),
    Layout("fused c_attn (q | k | v)", "c_attn", _block(_after_qk)),
    Layout("fused Wqkv (q | k | v)", "Wqkv", _block(_after_qk)),
)


def find_layers(model: nn.Module) -> tuple[str, str]:
    """(path of the decoder-layer ModuleList, name of the attention module in each layer)."""
    expected = getattr(text_config(model.config), "num_hidden_layers", None)
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0 or (expected and len(mod) != expected):
            continue
        for name in ATTENTION_NAMES:
            if all(isinstance(getattr(layer, name, None), nn.Module) for layer in mod):
                return path, name
    raise UnsupportedArchitectureError(
        f"architecture {getattr(model.config, 'model_type', type(model).__name__)!r}: no list of "
        f"{expected} decoder layers with an attention module named one of {', '.join(ATTENTION_NAMES)}")


def candidates(model: nn.Module) -> list[ArchitectureSpec]:
    """Every module map of :data:`LAYOUTS` whose modules the model's first attention module has."""
    path, attn_name = find_layers(model)
    first = getattr(model.get_submodule(path)[0], attn_name)
    out_name = next((n for n in _OUT_NAMES if isinstance(getattr(first, n, None), nn.Module)
                     and n != "c_attn"), None)
    if out_name is None:
        return []
    model_type = getattr(model.config, "model_type", type(model).__name__)
    specs = []
    for lay in LAYOUTS:
        if not isinstance(getattr(first, lay.value_module, None), nn.Module):
            continue

        def values(attn, layout, x, lay=lay):
            v = _rows(getattr(attn, lay.value_module), x, lay.value_rows(layout).to(x.device))
            return split_heads(v, layout.num_kv_heads, layout.head_dim)

        for window_name, window in _window_rules(model):
            specs.append(ArchitectureSpec(
                name=f"generic ({lay.name}, output {out_name}{window_name})", model_types=(model_type,),
                layers=lambda m, path=path: list(m.get_submodule(path)),
                attention=lambda layer, attn_name=attn_name: getattr(layer, attn_name),
                values=values,
                out_proj=lambda attn, layout, out_name=out_name: _out_proj(getattr(attn, out_name), layout),
                window=window,
            ))
    return specs


def _no_window(config, layer_idx: int) -> None:
    return None


def _window_rules(model: nn.Module) -> list[tuple[str, Callable]]:
    """(name suffix, window rule) to try: transformers' config rule, then, when the config
    declares a window, none (a family whose attention ignores a ``sliding_window`` key). The
    recording attention refuses a rule that contradicts the window a module passes, or, on a pass
    long enough to show it, the window its mask applies: the rule taken never changes a number."""
    config = text_config(model.config)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    if not any(config_window(config, i) for i in range(layers)):
        return [("", config_window)]
    return [("", config_window), (", no sliding window", _no_window)]


def discover(adapter) -> ArchitectureSpec:
    """The first candidate map that verifies itself on ``adapter.model``; else the first
    candidate's refusal (or, with no candidate, one naming the layouts tried)."""
    from .verify import verify_cached

    model = adapter.model
    specs = candidates(model)
    if not specs:
        raise UnsupportedArchitectureError(
            f"architecture {getattr(model.config, 'model_type', type(model).__name__)!r}: its attention modules "
            f"have none of the projection layouts heta-fast knows ({'; '.join(lay.name for lay in LAYOUTS)}); "
            f"describe it with heta_fast.model.ArchitectureSpec and register it with "
            f"heta_fast.model.register_architecture (README, 'Supported architectures')")
    first_error = None
    for spec in specs:
        try:
            verify_cached(adapter, _remember(spec, model))
            return _remember(spec, model)
        except UnsupportedArchitectureError as err:
            first_error = first_error or err
    raise first_error


# One spec object per (model class, config, layout): the verdict cache is keyed by the map.
_SPECS: dict[tuple, ArchitectureSpec] = {}


def _remember(spec: ArchitectureSpec, model: nn.Module) -> ArchitectureSpec:
    key = (type(model).__name__, model.config.to_json_string(use_diff=False), spec.name)
    return _SPECS.setdefault(key, spec)
