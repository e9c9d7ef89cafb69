"""OLMo-2: Llama projections, q/k RMSNorm over the whole projection (before the head split,
recorded as it is), and RMSNorms *after* attention and MLP instead of before them.

The attention module's input is the un-normalised residual stream; its output passes
``post_attention_layernorm`` (x / rms(x) · w) before the residual add. The flow gate's value
norm takes the norm's gain w per output dimension (docs/method.md §1, post-attention norms).
"""
from __future__ import annotations

from dataclasses import replace

from .llama import SPEC as LLAMA

SPEC = replace(LLAMA, name="olmo2", model_types=("olmo2",),
               post_attention_gain=lambda layer: layer.post_attention_layernorm.weight)
