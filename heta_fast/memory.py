"""The memory model: estimated peak bytes of every batched pass, to size batches under
``HETAConfig.memory_budget`` (model weights excluded).

The estimates count the tensors alive at the peak of a pass and over-count rather than
under-count. Three kinds of pass are sized here:

- a no-grad forward with a KV cache (:meth:`ModelShape.pass_bytes`): the information term's
  unmasked prefix and masked passes (:class:`MaskedPassBudget`);
- the fused vocabulary KL's working set (:meth:`ModelShape.head_bytes`);
- one probe of a batched Hessian-vector product (:meth:`ModelShape.probe_bytes`,
  :func:`probes_per_pass`): the curvature term.

and one store that is not a pass: the sketch estimator's matrices (:func:`sketch_bytes`), held
across its passes.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import MemoryBudgetError
from .model.architectures import head_layout_from_config, text_config

DEFAULT_MEMORY_BUDGET = 2 * 1024**3

# Bytes a pass needs beyond the tensors counted (rotary tables, masks of a few rows, allocator
# granularity); measured at ~2.5 MiB on SmolLM2-135M.
PASS_SLACK = 4 * 1024**2

# Elements per token and layer held by one probe's backward, in units of d_model, d_ff and
# (heads × keys). Over-estimates of what the default model measured (docs/method.md §2): a
# vmapped backward through the recorded graph of the first backward materialises, per probe
# and per differentiated layer, the residual stream and its norms, q/k/v and the attention
# output, the MLP's hidden activations, and one n × n score matrix per head. The shared primal
# graph is paid once and is not counted per probe.
_PROBE_PER_D_MODEL = 16
_PROBE_PER_D_FF = 6
_PROBE_PER_SCORE = 2


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide how much memory a pass needs."""

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
        """The sizes of ``model``'s language model (a multimodal model's text config)."""
        cfg = text_config(model.config)
        heads = head_layout_from_config(cfg)
        d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * heads.d_model
        return cls(
            layers=int(cfg.num_hidden_layers), d_model=heads.d_model, d_ff=int(d_ff), num_heads=heads.num_heads,
            num_kv_heads=heads.num_kv_heads, head_dim=heads.head_dim, vocab=int(cfg.vocab_size),
            itemsize=next(model.parameters()).element_size(),
        )

    def kv_bytes(self, rows: int, kv_length: int) -> int:
        """Keys and values of every layer for ``rows`` sequences of ``kv_length`` positions."""
        return 2 * self.layers * rows * self.num_kv_heads * kv_length * self.head_dim * self.itemsize

    def pass_bytes(self, rows: int, length: int, kv_length: int) -> int:
        """Peak bytes of a no-grad pass of ``rows`` x ``length`` new tokens attending to ``kv_length`` keys.

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

    def probe_bytes(self, n: int, layers: int) -> int:
        """Peak bytes one probe vector adds to a batched HVP over n tokens and ``layers`` layers."""
        itemsize = max(self.itemsize, 4)  # half models: float32 softmax and log-probabilities
        per_token_layer = (_PROBE_PER_D_MODEL * self.d_model + _PROBE_PER_D_FF * self.d_ff
                           + _PROBE_PER_SCORE * self.num_heads * n)
        return n * layers * per_token_layer * itemsize


def mib(nbytes: int) -> str:
    """``nbytes`` for a message: whole MiB, or KiB / bytes below one MiB (never "0 MiB")."""
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.0f} MiB"
    if nbytes >= 2**10:
        return f"{nbytes / 2**10:.0f} KiB"
    return f"{nbytes} bytes"


def probes_per_pass(shape: ModelShape, n: int, layers: int, memory_budget: int, max_batch: int) -> int:
    """Probe vectors per batched HVP pass over n tokens: as many as the budget holds, at most ``max_batch``.

    Raises :class:`~heta_fast.errors.MemoryBudgetError` if not even one probe fits.
    """
    need = shape.probe_bytes(n, layers)
    fits = memory_budget // need
    if fits < 1:
        raise MemoryBudgetError(
            f"one curvature probe over {n} tokens needs about {mib(need)}, more than "
            f"memory_budget={mib(memory_budget)}; raise memory_budget, use window_size or layer_subset")
    return int(min(fits, max_batch))


def sketch_bytes(rank: int, rows: int, d: int, probes: int) -> int:
    """Bytes the sketch estimator holds for one target across its passes (float64): the test
    matrix Ω and the products Y [rank, rows, d], the probes [rows, probes, d] and W [rank, rank]."""
    return 8 * (2 * rank * rows * d + rows * probes * d + rank * rank)


def check_sketch(rank: int, rows: int, d: int, probes: int, memory_budget: int) -> int:
    """:func:`sketch_bytes`, raising :class:`~heta_fast.errors.MemoryBudgetError` (before anything
    is allocated) when it exceeds ``memory_budget``."""
    need = sketch_bytes(rank, rows, d, probes)
    if need > memory_budget:
        raise MemoryBudgetError(
            f"the sketch of rank {rank} over {rows} tokens holds about {mib(need)}, more than "
            f"memory_budget={mib(memory_budget)}; lower sketch_rank, raise memory_budget or use window_size")
    return need


def packed_pass_bytes(shape: ModelShape, fixed: int, positions: int, prefix: int, reads: int, kl_chunk: int) -> int:
    """Peak of one packed masked pass: ``fixed`` bytes alive throughout (prefix caches, reference
    distributions), the packed inputs of ``positions`` tokens, one sequence of them attending to
    ``prefix`` cached positions and itself, and the fused KL's ``reads`` rows. The same rule for
    one request's pass (:class:`MaskedPassBudget`) and for a pass shared by several (its fixed
    bytes and reads summed over the requests in it; signals/information/group.py)."""
    inputs = positions * shape.d_model * shape.itemsize
    return fixed + inputs + shape.pass_bytes(1, positions, prefix + positions) + shape.head_bytes(reads, kl_chunk)


class MaskedPassBudget:
    """The information term's passes under one budget (bytes): which batches of masked variants
    fit, and how to chunk the unmasked prefix pass.

    A batch is described by ``packed`` (one sequence of all rows' positions), ``positions``
    (token-positions it runs), ``rows``, ``start``, ``length`` and ``prefix`` (cached positions
    it continues); see :class:`heta_fast.signals.information.masked_batches.MaskedBatch`.
    """

    def __init__(self, shape: ModelShape, budget: int, n_targets: int, prefix_length: int, n_windows: int,
                 kl_chunk: int, build_prefix: bool = True):
        self.shape, self.budget, self.n_targets = shape, int(budget), n_targets
        self.prefix_length, self.build_prefix, self.kl_chunk = prefix_length, build_prefix, kl_chunk
        # Alive throughout: the prefix cache and the reference distributions (one per window).
        self.fixed = shape.kv_bytes(1, prefix_length) + n_windows * n_targets * shape.vocab * 8

    def batch_bytes(self, batch) -> int:
        if batch.packed:  # one sequence of all the rows' positions, attending to prefix + itself
            return packed_pass_bytes(self.shape, self.fixed, batch.positions, batch.prefix,
                                     batch.rows * self.n_targets, self.kl_chunk)
        s = self.shape
        tokens, rows, kv = batch.positions, batch.rows, batch.start + batch.length
        inputs = tokens * s.d_model * s.itemsize
        return (self.fixed + inputs + s.pass_bytes(rows, batch.length, kv)
                + s.head_bytes(batch.rows * self.n_targets, self.kl_chunk))

    def fits(self, batch) -> bool:
        return self.batch_bytes(batch) <= self.budget

    def describe(self, batch) -> str:
        need = self.batch_bytes(batch)
        return (f"memory_budget={self.budget} bytes ({mib(self.budget)}) cannot hold one masked "
                f"variant of the information term: it runs {batch.length} positions attending to "
                f"{batch.start + batch.length} and needs about {need} bytes ({mib(need)}); raise "
                f"memory_budget or set window_size to bound the variant length")

    def prefix_chunk(self, position: int) -> int:
        """Tokens of the unmasked prefix pass to run at once from ``position`` (largest that fits)."""
        chunk = max(1, self.prefix_length - position)
        while chunk > 1 and self.fixed + self.shape.pass_bytes(1, chunk, position + chunk) > self.budget:
            chunk = (chunk + 1) // 2
        if self.fixed + self.shape.pass_bytes(1, chunk, position + chunk) > self.budget:
            raise MemoryBudgetError(f"memory_budget={self.budget} bytes cannot hold the unmasked prefix pass "
                                    f"of the information term even one token at a time")
        return chunk

    def prefix_bytes(self) -> int:
        """Peak of the unmasked prefix pass (0 when the prefix comes from the engine's forward pass)."""
        if not self.build_prefix:
            return 0
        chunk = self.prefix_chunk(0) if self.prefix_length else 1
        return self.fixed + self.shape.pass_bytes(1, chunk, chunk)
