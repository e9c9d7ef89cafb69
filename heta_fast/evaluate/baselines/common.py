"""What every baseline shares: the tokenised request, its embeddings, and the result type."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...request import TokenizedRequest, tokenize_request
from ...result import Attribution


@dataclass
class Prepared:
    """A request ready for a baseline: ids, input embeddings [n, d], target positions [T]."""

    request: TokenizedRequest
    embeds: torch.Tensor
    positions: torch.Tensor

    @property
    def n_context(self) -> int:
        return self.request.n_context

    @property
    def target_ids(self) -> torch.Tensor:
        return self.request.target_ids


def prepare(attributor, prompt, target) -> Prepared:
    """Tokenise (prompt, target) exactly as the engine does and embed the model input."""
    adapter = attributor.adapter
    req = tokenize_request(attributor.tokenizer, prompt, target, adapter.max_length,
                           adapter.vocab_size, sink_id=attributor.sink_id(attributor.config))
    embeds = adapter.embed(req.input_ids)
    return Prepared(request=req, embeds=embeds, positions=req.target_positions.to(adapter.device))


def make_result(attributor, prep: Prepared, scores: torch.Tensor, method: str, seconds: float,
                config: dict | None = None) -> Attribution:
    """An :class:`Attribution` of ``method`` with scores [T, n_context]."""
    req, tok = prep.request, attributor.tokenizer
    return Attribution(
        scores=scores.detach().cpu(),
        context_tokens=[tok.decode([int(i)]) for i in req.context_ids],
        target_tokens=[tok.decode([int(i)]) for i in req.target_ids],
        context_ids=req.context_ids.tolist(), target_ids=req.target_ids.tolist(), prompt=req.prompt,
        method=method, model=attributor.model_name, config=dict(config or {}),
        timings={"total": round(seconds, 6)},
    )


def gather_target_log_probs(log_probs: torch.Tensor, rows: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """log_probs [B, T, V], rows [B] (which target each copy scores) -> f_b = log p(y_{rows_b}) [B]."""
    b = torch.arange(log_probs.shape[0], device=log_probs.device)
    rows = rows.to(log_probs.device)
    return log_probs[b, rows, target_ids.to(log_probs.device)[rows]]
