"""The function whose curvature S measures: f(h) = log p(x_T | x_<T) at one target position.

h is either the input embeddings X [n, d] (``layers=0``, the paper's default) or the residual
stream entering the last ``layers`` decoder layers (``layer_subset``): then the model's forward
runs as usual on the constant X, and a pre-hook on the first differentiated layer replaces that
layer's input with h. Nothing below that layer depends on h, so every backward pass stops there.
Row i of h belongs to token i in both cases (the residual stream keeps one row per position).

``start`` > 0 freezes rows [0, start) as a key/value prefix computed once without gradients:
h then holds rows start..n-1 only. By causality no hidden state before ``start`` depends on
those rows, so the Hessian blocks of tokens ≥ start are unchanged while every pass runs on the
suffix only (the exact estimator uses this, exact.py).

Position and token are tensors, never Python ints read back from the device, so the same
function can be traced into a CUDA graph and reused for other targets (see cuda_graphs.py).
"""
from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache

from ...dtypes import at_least_float32
from ...errors import ConfigError
from ...model.adapter import ModelAdapter


class TargetFunction:
    """f and its logits for one input, as pure functions of h.

    embeds:   [n, d] input embeddings (constants; the input the model sees below the cut)
    position: 0-dim long tensor, the position that predicts the target
    token:    0-dim long tensor, the target token id
    layers:   0 = differentiate w.r.t. the embeddings; N > 0 = w.r.t. the residual stream
              entering the last N decoder layers
    start:    rows [0, start) are a constant prefix; h is rows [start, n) (row j = token start + j)
    prefix:   optional keys/values of rows [0, start) per layer (see :func:`prefix_keys_values`)
    """

    def __init__(self, adapter: ModelAdapter, embeds: torch.Tensor, position: torch.Tensor,
                 token: torch.Tensor, layers: int = 0, start: int = 0, prefix=None):
        total = len(adapter.layers)
        if layers > total:
            raise ConfigError(f"layer_subset={layers} but the model has only {total} decoder layers")
        self.adapter = adapter
        self.start = start
        self.embeds = embeds[start:].detach()
        self.position = (position.reshape(1) - start).to(embeds.device)  # row of h that predicts
        self.token = token.reshape(()).to(embeds.device)
        self.cut = None if layers == 0 else adapter.layers[total - layers]
        if start > 0 and prefix is None:
            prefix = prefix_keys_values(adapter, embeds[:start])
        self.prefix = prefix if start > 0 else None

    # ------------------------------------------------------------------ primal point
    @torch.no_grad()
    def primal(self) -> torch.Tensor:
        """The point h0 [n, d] where the curvature is taken (X itself, or the cut layer's input)."""
        if self.cut is None:
            return self.embeds
        seen = {}

        def grab(module, args, kwargs):
            seen["h"] = args[0] if args else kwargs["hidden_states"]

        handle = self.cut.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.adapter.logits(self.embeds[None], self.position, cache=self._cache())
        finally:
            handle.remove()
        return seen["h"][0].detach()

    # ------------------------------------------------------------------ pure functions of h
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [n, d] -> logits [V] at the target position (float32 at least)."""
        with self._substituted(h):
            x = self.embeds if self.cut is not None else h
            out = self.adapter.logits(x[None], self.position, cache=self._cache())[0, 0]
        return at_least_float32(out)

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        """h [n, d] -> f(h) = log p(token | h), a scalar."""
        return torch.log_softmax(self.logits(h), dim=-1).gather(0, self.token.reshape(1))[0]

    def _cache(self):
        # A fresh cache per call: the forward appends the suffix's keys and values to it.
        if self.prefix is None:
            return None
        return DynamicCache(ddp_cache_data=self.prefix)

    @contextlib.contextmanager
    def _substituted(self, h: torch.Tensor):
        if self.cut is None:
            yield
            return

        def swap(module, args, kwargs):
            # The layer receives h instead of what the layers below computed from X.
            if args:
                return (h[None],) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h[None]}

        handle = self.cut.register_forward_pre_hook(swap, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


@torch.no_grad()
def prefix_keys_values(adapter: ModelAdapter, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values [1, Hkv, a, dh] of the input rows [a, d] (no gradients).

    Slicing them to [:, :, :start] gives the prefix of any start ≤ a (causal attention)."""
    cache = DynamicCache()
    adapter.logits(rows.detach()[None], torch.tensor([rows.shape[0] - 1], device=rows.device), cache=cache)
    return [(layer.keys, layer.values) for layer in cache.layers]
