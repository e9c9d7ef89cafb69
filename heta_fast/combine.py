"""How the three components become one score: Attr = M ⊙ (β σ(S) + γ σ(I)) (docs/method.md §4).

σ is the term scale (``HETAConfig.term_scale``): the identity for "raw" (the paper's sum),
else each term's row put on a common scale before β and γ weigh it.
"""
from __future__ import annotations

import torch

TERM_SCALES = ("raw", "max", "simplex", "rank")


def scale_term(term: torch.Tensor, how: str, attributed: torch.Tensor | None = None) -> torch.Tensor:
    """One term [T, n] (non-negative) scaled row by row over the attributed columns
    (``attributed`` [n] bool, default all; the others come out 0): "raw" unchanged; "max"
    divided by the row's maximum; "simplex" by the row's sum; "rank" replaced by its rank among
    the attributed entries of its row, mapped to [0, 1] (ties share their mean rank; a single
    attributed token gets 1). A row of zeros stays zeros."""
    if how == "raw":
        return term
    keep = torch.ones(term.shape[-1], dtype=torch.bool) if attributed is None else attributed.cpu()
    keep = keep.to(term.device)
    term = term.masked_fill(~keep, 0.0)
    if how in ("max", "simplex"):
        norm = term.amax(-1, keepdim=True) if how == "max" else term.sum(-1, keepdim=True)
        return term / torch.where(norm > 0, norm, torch.ones_like(norm))
    if how == "rank":
        n = int(keep.sum())
        pairs = keep[None, None, :]  # compare with attributed entries only
        below = ((term[..., None, :] < term[..., :, None]) & pairs).sum(-1)  # [T, n]
        ties = ((term[..., None, :] == term[..., :, None]) & pairs).sum(-1)
        ranks = (below + (ties - 1) / 2) / max(n - 1, 1) if n > 1 else torch.ones_like(term)
        ranks = ranks.to(term.dtype).masked_fill(~keep, 0.0)
        return torch.where((term > 0).any(-1, keepdim=True), ranks, torch.zeros_like(term))
    raise ValueError(f"unknown term scale {how!r}; choose from {TERM_SCALES}")


def combine(flow: torch.Tensor | None, curvature: torch.Tensor | None, information: torch.Tensor | None,
            beta: float, gamma: float, term_scale: str = "raw", attributed: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Attr [T, n_context] from the components that were computed (each [T, n_context] or None).

    Without the flow gate the score is ungated (β σ(S) + γ σ(I)); with the gate alone it is M.
    ``term_scale``: σ of :func:`scale_term` ("raw": the paper's formula), over the
    ``attributed`` columns ([n_context] bool, default all).
    """
    if curvature is not None:
        curvature = scale_term(curvature, term_scale, attributed)
    if information is not None:
        information = scale_term(information, term_scale, attributed)
    inner = None
    if curvature is not None:
        inner = beta * curvature
    if information is not None:
        inner = gamma * information if inner is None else inner + gamma * information
    if flow is None:
        return inner
    return flow if inner is None else flow * inner


def unattributed_to_zero(part: torch.Tensor | None, attributed: torch.Tensor) -> torch.Tensor | None:
    """A component [T, n_context] with the columns of tokens that get no attribution (a chat's
    template tokens; ``attributed`` [n_context] bool is False) set to 0; None stays None."""
    if part is None or bool(attributed.all()):
        return part
    return part.masked_fill(~attributed.to(part.device), 0.0)
