"""Occlusion / leave-one-out (Li et al. 2016; Zeiler & Fergus 2014 for images).

score_{t,i} = p(y_t | x) − p(y_t | x with token i's input embedding replaced by a mask vector)

(a probability drop; negative when removing the token makes the target more likely). The mask
vector follows the engine's ``mask_scheme`` (default: zero), as HETA's information term does.
The n_context occluded copies go through the model ``max_batch`` at a time.
"""
from __future__ import annotations

import time

import torch

from ...model.exclusive import holding_the_model
from ...result import Attribution
from ...signals.information.masking import mask_vectors
from .common import make_result, prepare


@holding_the_model
@torch.no_grad()
def occlusion_scores(adapter, embeds: torch.Tensor, positions: torch.Tensor, target_ids: torch.Tensor,
                     n_context: int, masks: torch.Tensor, max_batch: int = 32) -> torch.Tensor:
    """embeds [n, d], masks [n_context, d] -> probability drops [T, n_context] (float64)."""
    x = embeds[: int(positions.max()) + 1]
    cols = torch.arange(positions.numel())
    ids = target_ids.to(x.device)
    full = adapter.log_probs(x[None], positions)[0, cols, ids].double().exp().cpu()  # [T]
    out = torch.empty(positions.numel(), n_context, dtype=torch.float64)
    for start in range(0, n_context, max_batch):
        idx = torch.arange(start, min(start + max_batch, n_context))
        batch = x.unsqueeze(0).repeat(len(idx), 1, 1)
        batch[torch.arange(len(idx)), idx.to(x.device)] = masks[idx.to(masks.device)].to(x.dtype)
        masked = adapter.log_probs(batch, positions)[:, cols, ids].double().exp().cpu()  # [B, T]
        out[:, idx] = full[:, None] - masked.t()
    return out


@holding_the_model
def occlusion(attributor, prompt, target) -> Attribution:
    """Leave-one-out probability drop per token (signed); see the module docstring."""
    clock = time.perf_counter()
    prep = prepare(attributor, prompt, target)
    cfg = attributor.config
    masks = mask_vectors(cfg.mask_scheme, prep.embeds[: prep.n_context], attributor.model.get_input_embeddings(),
                         attributor.tokenizer)
    scores = occlusion_scores(attributor.adapter, prep.embeds, prep.positions, prep.target_ids, prep.n_context,
                              masks, cfg.max_batch)
    return make_result(attributor, prep, scores, "occlusion", time.perf_counter() - clock,
                       config={"mask_scheme": cfg.mask_scheme})
