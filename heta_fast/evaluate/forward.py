"""Forward passes of the metrics: next-token distributions of (perturbed) input embeddings.

The metrics accept either a transformers causal LM or a :class:`heta_fast.model.adapter.ModelAdapter`
and only ever run the model from input embeddings, so that erasing a token (zeroing its
embedding, or some of its elements) never moves a position.
"""
from __future__ import annotations

import torch


def as_model(model):
    """The transformers model behind ``model`` (a ModelAdapter or the model itself)."""
    return getattr(model, "model", None) if _is_adapter(model) else model


def _is_adapter(obj) -> bool:
    return hasattr(obj, "capture") and hasattr(obj, "spec")


def embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [..., n] -> input embeddings [..., n, d] (detached, on the model's device)."""
    lm = as_model(model)
    table = lm.get_input_embeddings()
    return table(input_ids.to(table.weight.device)).detach()


@torch.no_grad()
def next_token_probs(model, embeds: torch.Tensor, max_batch: int = 32) -> torch.Tensor:
    """embeds [B, n, d] -> float64 next-token probabilities at the last position [B, V].

    The batch goes through the model in chunks of at most ``max_batch`` sequences.
    """
    lm = as_model(model)
    out = []
    for start in range(0, embeds.shape[0], max_batch):
        chunk = embeds[start : start + max_batch]
        logits = lm(inputs_embeds=chunk, use_cache=False, logits_to_keep=1).logits[:, -1]
        out.append(torch.softmax(logits.double(), dim=-1).cpu())
    return torch.cat(out)
