"""A conservative memory model of one no-grad forward pass with a KV cache.

Used to size batches under ``HETAConfig.memory_budget``. The estimate counts the tensors that
are alive at the peak of a pass; it over-counts rather than under-counts (it assumes the
attention materialises scores, the additive mask and probabilities at once, as the eager path
does; fused kernels need less).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Bytes a pass needs beyond the tensors counted (rotary tables, masks of a few rows, allocator
# granularity); measured at ~2.5 MiB on SmolLM2-135M.
PASS_SLACK = 4 * 1024**2


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide how much memory a forward pass needs."""

    layers: int
    d_model: int
    d_ff: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    itemsize: int  # bytes per element of the model's activations

    @classmethod
    def of(cls, model: nn.Module) -> "ModelShape":
        cfg = model.config
        d = int(cfg.hidden_size)
        heads = int(cfg.num_attention_heads)
        d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
        param = next(model.parameters())
        return cls(
            layers=int(cfg.num_hidden_layers), d_model=d, d_ff=int(d_ff), num_heads=heads,
            num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(cfg, "head_dim", None) or d // heads),
            vocab=int(cfg.vocab_size), itemsize=param.element_size(),
        )

    def kv_bytes(self, rows: int, kv_length: int) -> int:
        """Keys and values of every layer for ``rows`` sequences of ``kv_length`` positions."""
        return 2 * self.layers * rows * self.num_kv_heads * kv_length * self.head_dim * self.itemsize

    def pass_bytes(self, rows: int, length: int, kv_length: int) -> int:
        """Peak bytes of a pass of ``rows`` x ``length`` new tokens attending to ``kv_length`` keys.

        The batch's cache (all layers, ``kv_length`` positions per row) stays alive for the whole
        pass, and growing one layer's cache briefly holds the old and the new copy; on top of it
        the widest layer: the residual stream, norms, projections and MLP activations
        ([rows, length, ...]) and the attention scores, mask and probabilities
        ([rows, heads, length, kv_length], counted three times, plus a float mask); plus a fixed
        slack for the framework's small tensors and the allocator.
        """
        e = self.itemsize
        tokens = rows * length
        activations = tokens * e * (6 * self.d_model + 2 * self.num_heads * self.head_dim + 3 * self.d_ff)
        scores = rows * length * kv_length * (3 * self.num_heads + 1) * max(e, 4)
        cache = self.kv_bytes(rows, kv_length) * (self.layers + 1) // self.layers
        return cache + activations + scores + PASS_SLACK

    def head_bytes(self, rows: int, chunk: int) -> int:
        """The fused vocabulary KL's working set for ``rows`` hidden states (float32 chunks)."""
        return 4 * rows * min(chunk, self.vocab) * 4
