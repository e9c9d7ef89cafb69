"""Rotary embeddings whose frequencies depend on the length of the pass, held fixed for a block.

transformers' ``dynamic`` and ``longrope`` rotary embeddings choose their frequencies in each
forward, from the pass's largest position (``dynamic_rope_update``): longrope takes its long
factors once the pass is longer than ``original_max_position_embeddings`` (Phi-3.5-mini,
Phi-3-128k, Phi-4-mini), dynamic NTK rescales past ``max_position_embeddings``. Longrope writes
its choice into the ``inv_freq`` buffer in place, which torch.func's transforms (the curvature
term's ``vjp``/``jvp``) forbid; and a padded pass (a group of inputs, a CUDA graph's static
length) would choose by the padded length, not the input's.

:func:`settled_rotary` runs transformers' own update once, outside any transform, for a pass
over the input's positions, then lets the modules compute their tables from the frequencies it
chose without updating them until the block ends: the numbers of the model's own forward over
that input, whatever the transform or the padding.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn


def _updates_per_pass(rope_type) -> bool:
    """Whether transformers' ``dynamic_rope_update`` changes this rope type's frequencies per pass."""
    return isinstance(rope_type, str) and ("dynamic" in rope_type or rope_type == "longrope")


# model -> its updating rotaries: a model's modules do not change, and the lookup runs for every
# curvature operator (settled_rotary), so the walk over the modules is done once per model.
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def updating_rotaries(model: nn.Module) -> list[tuple[nn.Module, list[str | None]]]:
    """(module, layer types) of every rotary embedding whose forward updates its frequencies per
    pass; layer types: the keys of a per-layer-type ``rope_type`` that update, or [None] for a
    module with one rope type."""
    if model not in _FOUND:
        _FOUND[model] = _find_updating_rotaries(model)
    return _FOUND[model]


def _find_updating_rotaries(model: nn.Module) -> list[tuple[nn.Module, list[str | None]]]:
    found = []
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        if rope_type is None or not hasattr(type(module).forward, "__wrapped__"):
            continue  # not a rotary module, or one whose forward transformers does not wrap
        kinds = rope_type.items() if isinstance(rope_type, dict) else [(None, rope_type)]
        layer_types = [layer_type for layer_type, kind in kinds if _updates_per_pass(kind)]
        if layer_types:
            found.append((module, layer_types))
    return found


@contextlib.contextmanager
def settled_rotary(model: nn.Module, length: int):
    """Within the block, every rotary embedding of ``model`` that chooses its frequencies per pass
    keeps those of a pass over positions 0 .. length - 1 and updates nothing (see the module
    docstring). A no-op for a model without one. Not reentrant with another length: an inner
    block settles again from transformers' update, so its length wins until it ends."""
    rotaries = updating_rotaries(model)
    saved = []
    try:
        for module, layer_types in rotaries:
            _settle(module, layer_types, length)
            # An instance attribute shadows the class's (decorated) forward for this module only.
            saved.append((module, module.__dict__.get("forward")))
            module.forward = type(module).forward.__wrapped__.__get__(module)
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def frequency_key(model: nn.Module, length: int) -> tuple:
    """What identifies the rotary frequencies of the model's pass over ``length`` positions: two
    lengths with equal keys run with the same tables (so one padded pass can serve both). Empty
    for a model whose frequencies do not change per pass. Settles the rotaries (as a pass would)."""
    key = []
    for module, layer_types in updating_rotaries(model):
        _settle(module, layer_types, length)
        key += [tuple(b.flatten().tolist()) for name, b in module.named_buffers() if name.endswith("inv_freq")]
        key += [repr(v) for name, v in sorted(vars(module).items()) if name.endswith("attention_scaling")]
    return tuple(key)


@torch.no_grad()
def _settle(module: nn.Module, layer_types: list[str | None], length: int) -> None:
    """Run transformers' frequency update (the decorated forward) for a pass of ``length`` positions."""
    buffer = next(module.buffers(), None)
    device = buffer.device if buffer is not None else torch.device("cpu")
    probe = torch.zeros(1, device=device)  # the forward reads only the device and dtype of x
    positions = torch.arange(length, device=device)[None]
    for layer_type in layer_types:
        kwargs = {} if layer_type is None else {"layer_type": layer_type}
        type(module).forward(module, probe, positions, **kwargs)
