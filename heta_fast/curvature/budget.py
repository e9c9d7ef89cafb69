"""How many probe vectors one batched curvature pass may hold under ``HETAConfig.memory_budget``.

A vmapped backward through the recorded graph of the first backward materialises, per probe
and per differentiated layer, tensors of the sizes of that layer's activations: the residual
stream and its norms, q/k/v and the attention output, the MLP's hidden activations, and
attention scores/probabilities (one n × n matrix per head). The shared primal graph is paid
once and is not counted per probe. The constants over-count (calibrated on the default model:
the measured peak per probe was below this estimate; see docs/method.md §2).
"""
from __future__ import annotations

from ..errors import MemoryBudgetError

# Elements per token and layer held by one probe's backward, in units of d_model, d_ff and
# (heads × keys). Over-estimates of what the default model measured.
_PER_D_MODEL = 16
_PER_D_FF = 6
_PER_SCORE = 2


def bytes_per_probe(n: int, layers: int, d_model: int, d_ff: int, num_heads: int, itemsize: int) -> int:
    """Estimated peak bytes one probe vector adds to a batched HVP over n tokens and ``layers`` layers."""
    per_token_layer = _PER_D_MODEL * d_model + _PER_D_FF * d_ff + _PER_SCORE * num_heads * n
    return n * layers * per_token_layer * itemsize


def probes_per_pass(model, n: int, layers: int, memory_budget: int, max_batch: int) -> int:
    """Probe vectors per batched pass: as many as the budget holds, at most ``max_batch``.

    Raises :class:`~heta_fast.errors.MemoryBudgetError` if not even one probe fits.
    """
    cfg = model.config
    d = int(cfg.hidden_size)
    d_ff = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d)
    itemsize = max(next(model.parameters()).element_size(), 4)  # half models: float32 softmax/log-probs
    need = bytes_per_probe(n, layers, d, d_ff, int(cfg.num_attention_heads), itemsize)
    fits = memory_budget // need
    if fits < 1:
        raise MemoryBudgetError(
            f"one curvature probe over {n} tokens needs about {need / 2**20:.0f} MiB, more than "
            f"memory_budget={memory_budget / 2**20:.0f} MiB; raise memory_budget, use window_size "
            f"or layer_subset")
    return int(min(fits, max_batch))
