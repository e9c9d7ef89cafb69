"""How the three components become one score: Attr = M ⊙ (β S + γ I) (docs/method.md)."""
from __future__ import annotations

import torch


def combine(flow: torch.Tensor | None, curvature: torch.Tensor | None, information: torch.Tensor | None,
            beta: float, gamma: float) -> torch.Tensor:
    """Attr [T, n_context] from the components that were computed (each [T, n_context] or None).

    Without the flow gate the score is ungated (β S + γ I); with the gate alone it is M.
    """
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
