"""Mask vectors for the information term: what replaces a masked token's input embedding."""
from __future__ import annotations

import torch

from ...errors import ConfigError


def mask_vectors(scheme: str, context_embeds: torch.Tensor, token_embedding=None, tokenizer=None) -> torch.Tensor:
    """[n_context, d] replacement rows, one per context token.

    zero: the zero vector; mean: the mean of the context embeddings (computed once from the
    unmasked input); pad / unk: the input embedding of the tokenizer's pad / unk token.
    """
    n, d = context_embeds.shape
    if scheme == "zero":
        row = torch.zeros(d, dtype=context_embeds.dtype, device=context_embeds.device)
    elif scheme == "mean":
        row = context_embeds.mean(0)
    elif scheme in ("pad", "unk"):
        token_id = getattr(tokenizer, f"{scheme}_token_id", None) if tokenizer is not None else None
        if token_id is None:
            raise ConfigError(f"mask_scheme={scheme!r} needs a tokenizer with a {scheme} token; this one has none")
        ids = torch.tensor([token_id], device=context_embeds.device)
        row = token_embedding(ids)[0].detach().to(context_embeds.dtype)
    else:
        raise ConfigError(f"unknown mask scheme {scheme!r}")
    return row.expand(n, d)
