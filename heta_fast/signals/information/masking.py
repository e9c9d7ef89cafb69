"""Mask vectors for the information term: what replaces a masked token's input embedding."""
from __future__ import annotations

import torch

from ...errors import ConfigError
from ...request import TOKEN_MASK_SCHEMES, mask_token_id


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
    elif scheme in TOKEN_MASK_SCHEMES:
        # The engine checked the token against the model's vocabulary already (Attributor._call_config);
        # other callers get the same ConfigError here, against the rows the embedding has.
        token_id = mask_token_id(tokenizer, scheme, getattr(token_embedding, "num_embeddings", None))
        ids = torch.tensor([token_id], device=context_embeds.device)
        row = token_embedding(ids)[0].detach().to(context_embeds.dtype)
    else:
        raise ConfigError(f"unknown mask scheme {scheme!r}")
    return row.expand(n, d)
