"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

With residual connections accounted for, each layer's head-averaged attention becomes
Â^(l) = ½ Ā^(l) + ½ I (rows renormalised), and the rollout is the product
Ã = Â^(L) Â^(L−1) ⋯ Â^(1). The score of prompt token i for the target predicted at position
p_t is Ã[p_t, i]. The flow signal's streamed rollout ends with exactly this row
(:func:`heta_fast.signals.flow.stream_rollout`), so the baseline is one capture pass and the
flow gate's own rollout: no attention matrix is materialised.
"""
from __future__ import annotations

import time

from ...model.exclusive import holding_the_model
from ...result import Attribution
from ...signals import SIGNALS
from ...signals.flow import stream_rollout
from .common import make_result, prepare


@holding_the_model
def rollout(attributor, prompt, target) -> Attribution:
    """Attention rollout per token (non-negative; a single-token target's row sums to 1)."""
    clock = time.perf_counter()
    prep = prepare(attributor, prompt, target)
    adapter = attributor.adapter
    request = SIGNALS["flow"].capture_request(adapter, attributor.config)
    capture = adapter.capture(prep.embeds, prep.positions, request)
    scores = stream_rollout(capture, prep.positions).rollout[:, : prep.n_context]
    return make_result(attributor, prep, scores, "rollout", time.perf_counter() - clock)
