"""Gemma, Gemma-2, Gemma-3: Llama projections; embeddings scaled by sqrt(d_model) inside the
embedding module (so the input embeddings X heta perturbs are the scaled rows the first layer
receives, docs/method.md §0).

- gemma: pre-norms only;
- gemma2, gemma3_text: an RMSNorm after attention (x / rms(x) · (1 + w)), whose gain 1 + w the
  flow gate's value norm takes per output dimension (docs/method.md §1); sliding and global
  layers by ``layer_types``; Gemma-2's attention and final-logit soft-capping are applied by
  heta's attention functions and the fused KL (docs/method.md, soft-capping); Gemma-3's q/k
  norms run before the attention function and are recorded as they are;
- gemma3: the multimodal class (Gemma3ForConditionalGeneration, the 4B+ checkpoints): the same
  decoder layers under ``model.model.language_model``, sizes in ``config.text_config``.
"""
from __future__ import annotations

from dataclasses import replace

from .llama import SPEC as LLAMA
from .llama import config_window


def _gain(layer):
    """Gemma's RMSNorm multiplies by (1 + weight)."""
    return 1.0 + layer.post_attention_layernorm.weight


# Gemma's attention passes no window; Gemma-2/3 pass each layer's (``layer_types``).
GEMMA = replace(LLAMA, name="gemma", model_types=("gemma",))
GEMMA2 = replace(LLAMA, name="gemma2", model_types=("gemma2",), post_attention_gain=_gain, window=config_window)
GEMMA3_TEXT = replace(GEMMA2, name="gemma3_text", model_types=("gemma3_text",))
GEMMA3 = replace(GEMMA2, name="gemma3", model_types=("gemma3",),
                 layers=lambda model: list(model.model.language_model.layers))
