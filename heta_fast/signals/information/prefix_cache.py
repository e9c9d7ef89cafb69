"""The unmasked input's KV cache, computed once and shared by every masked variant.

Masking token i changes no hidden state before position i (causal attention), so a masked
variant only needs to run positions i, i+1, ... attending to the unmasked keys and values of
positions [0, i). :class:`PrefixCache` holds those keys and values for the first P positions and
hands each batch of variants a transformers cache cut to its start and widened to its rows;
:func:`joined_cache` lays several requests' prefixes one after the other for a pass they share.
"""
from __future__ import annotations

from typing import Callable

import torch
from transformers import DynamicCache

from ...model.adapter import ModelAdapter


class PrefixCache:
    """Per layer, keys and values [1, Hkv, P, dh] of the unmasked positions [0, P)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int, passes: int = 0):
        self.layers = layers
        self.length = length
        self.passes = passes  # forward passes (chunks) it took to build

    @classmethod
    def build(cls, adapter: ModelAdapter, embeds: torch.Tensor,
              chunk_at: Callable[[int], int]) -> "PrefixCache":
        """Run the unmasked embeds [P, d] once, in chunks of ``chunk_at(position)`` tokens.

        Chunking (each chunk attends to the cache of the ones before it) bounds the memory of
        the pass on long inputs; the keys and values are the same as from one pass.
        """
        total = embeds.shape[0]
        if total == 0:
            return cls([], 0)
        cache = DynamicCache()
        pos = passes = 0
        while pos < total:
            step = min(chunk_at(pos), total - pos)
            adapter.hidden_states(embeds[None, pos : pos + step], cache)
            pos += step
            passes += 1
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        return cls(layers, total, passes)

    @classmethod
    def from_kv(cls, kv: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> "PrefixCache":
        """The first ``length`` positions of keys and values a forward pass already computed
        (:attr:`heta_fast.model.capture.Capture.kv`): no extra pass. Keys at position j
        depend on positions <= j only, so a longer pass's keys cut to [0, length) are the prefix's."""
        if kv and kv[0][0].shape[2] < length:
            raise ValueError(f"the captured keys hold {kv[0][0].shape[2]} positions, {length} were asked for")
        return cls([(k[:, :, :length], v[:, :, :length]) for k, v in kv], length)

    def for_batch(self, start: int, rows: int) -> DynamicCache:
        """A fresh cache holding positions [0, start) for ``rows`` sequences (filled as it runs)."""
        if start > self.length:
            raise ValueError(f"the prefix cache holds {self.length} positions, {start} were asked for")
        if start == 0:
            return DynamicCache()
        return DynamicCache(ddp_cache_data=[
            (k[:, :, :start].expand(rows, -1, -1, -1), v[:, :, :start].expand(rows, -1, -1, -1))
            for k, v in self.layers
        ])


def joined_cache(parts: list[tuple[PrefixCache, int]]) -> DynamicCache:
    """One cache for a pass shared by several inputs: parts = (prefix cache, length) per input, in
    order; per layer the keys and values of each input's positions [0, length) one after the other
    along the sequence axis ([1, Hkv, Σ length, dh]). The pass's packed segments say where their own
    input's region starts (:meth:`.packing.PackedVariants.join`); the positions are the inputs' own
    (the keys were rotated when they were computed), so the regions need no re-encoding."""
    for cache, length in parts:
        if length > cache.length:
            raise ValueError(f"the prefix cache holds {cache.length} positions, {length} were asked for")
    used = [(cache, length) for cache, length in parts if length > 0]
    if not used:
        return DynamicCache()
    layers = zip(*[cache.layers for cache, _ in used])  # per layer, each input's (keys, values)
    return DynamicCache(ddp_cache_data=[
        (torch.cat([k[:, :, :n] for (k, _), (_, n) in zip(kv, used)], dim=2),
         torch.cat([v[:, :, :n] for (_, v), (_, n) in zip(kv, used)], dim=2))
        for kv in layers
    ])
