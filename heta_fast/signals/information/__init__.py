"""The information term I_i = KL(P_orig ‖ P_masked^(i)) at every target position.

- signal.py: the masked passes and their fused vocabulary KL, window by window
- masking.py: what replaces a masked token's embedding (``mask_scheme``)
- prefix_cache.py: the unmasked input's keys and values, shared by every masked variant
- masked_batches.py: which variants run together under the memory budget
- packing.py: several variants laid end to end in one packed sequence
- group.py: several requests' masked variants in shared packed passes
- fisher.py: the opt-in second-order estimate (``information_estimator="fisher"``)
"""
from __future__ import annotations

import torch

from ...memory import ModelShape, probes_per_pass
from ...model.capture import CaptureRequest
from ...progress import PhaseEstimate
from ...windows import context_windows
from ..base import SignalContext, compute_each
from .fisher import fisher_information
from .group import GroupItem, information_group
from .masking import mask_vectors
from .prefix_cache import PrefixCache
from .signal import information, plan_passes


class InformationSignal:
    """I from masked passes continuing the capture's keys and values; P_orig is the capture's
    log-probabilities."""

    name = "information"
    precision_stage = "forward"  # heta_fast/precision.py: the masked passes continue the capture's keys and values

    def capture_request(self, model, config) -> CaptureRequest:
        if config.information_estimator == "fisher":
            return CaptureRequest()  # its own forward pass with gradients
        # The masked variants continue the unmasked pass's keys and values (no second prefix pass).
        return CaptureRequest(key_values=True)

    def estimate(self, model, request, config) -> PhaseEstimate:
        if config.information_estimator == "fisher":
            targets = request.target_positions.numel()
            return PhaseEstimate(self.name, targets, "targets", passes=1 + targets * config.information_rank,
                                 peak_bytes=fisher_peak_bytes(model, request.input_ids.numel(), config))
        plan = plan_passes(model, request.n_context, request.target_positions, config, prefix_given=True)
        variants = sum(w.size for w in plan.windows)
        return PhaseEstimate(self.name, variants, "masked variants", passes=len(plan.batches),
                             peak_bytes=plan.peak_bytes)

    def check_budget(self, model, request, config, cache) -> None:
        """The masked passes planned as :meth:`compute` plans them (the prefix from the capture
        forward); the second-order estimate checks no budget."""
        if config.information_estimator != "fisher":
            plan_passes(model, request.n_context, request.target_positions, config, prefix_given=True)

    def compute(self, context: SignalContext) -> torch.Tensor:
        n_ctx, model = context.n_context, context.model
        masks = mask_vectors(context.config.mask_scheme, context.embeds[:n_ctx], model.model.get_input_embeddings(),
                             context.tokenizer)
        cfg = context.config
        if cfg.information_estimator == "fisher":
            targets = context.phase(self.name, context.positions.numel(), "targets")
            out = fisher_information(model, context.embeds, context.positions, n_ctx, masks, cfg.information_rank,
                                     on_target=targets.advance).cpu()
            targets.finish()
            return out
        prefix = PrefixCache.from_kv(context.capture.kv, n_ctx - 1)
        windows = context_windows(n_ctx, cfg.window_size, cfg.window_overlap)
        variants = context.phase(self.name, sum(w.size for w in windows), "masked variants")
        out = information(model, context.embeds, context.positions, n_ctx, masks, context.capture.log_probs, cfg,
                          prefix=prefix, on_variants=variants.advance).cpu()
        variants.finish()
        return out

    def compute_group(self, contexts: list[SignalContext]) -> list[torch.Tensor]:
        """The requests' masked variants packed into shared passes (group.py)."""
        cfg = contexts[0].config
        if cfg.information_estimator == "fisher":
            return compute_each(self, contexts)
        items, reporters = [], []
        for c in contexts:
            n_ctx = c.n_context
            masks = mask_vectors(cfg.mask_scheme, c.embeds[:n_ctx], c.model.model.get_input_embeddings(), c.tokenizer)
            items.append(GroupItem(c.embeds, c.positions, n_ctx, masks, c.capture.log_probs,
                                   PrefixCache.from_kv(c.capture.kv, n_ctx - 1)))
            windows = context_windows(n_ctx, cfg.window_size, cfg.window_overlap)
            reporters.append(c.phase(self.name, sum(w.size for w in windows), "masked variants"))
        out = [value.cpu() for value in information_group(contexts[0].model, items, cfg)]
        for reporter in reporters:  # shared passes mix requests: each request is done when the group is
            reporter.finish()
        return out


def fisher_peak_bytes(model, n: int, config) -> int:
    """The second-order estimate's peak: one forward graph over n tokens and every layer (a
    probe's worth; it differentiates w.r.t. the embeddings whatever layer_subset says);
    raises MemoryBudgetError above ``config.memory_budget``."""
    shape = ModelShape.of(model.model)
    probes_per_pass(shape, n, shape.layers, config.memory_budget, 1)  # refuses what does not fit
    return shape.probe_bytes(n, shape.layers)


__all__ = ["InformationSignal", "PrefixCache", "fisher_information", "information", "mask_vectors"]
