"""What a model does to its LM head's output before the softmax, beyond h W^T + b.

z = h W^T + b, then ``scale`` (Granite divides by ``logits_scaling``: scale = 1 / logits_scaling;
Cohere multiplies by ``logit_scale``), then final-logit soft-capping z -> c·tanh(z / c)
(Gemma-2). The information term's fused KL must apply the same (``vocab_kl`` options).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class LogitTransform:
    """z -> softcap(scale · z); identity for scale 1 and softcap None."""

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, config) -> "LogitTransform":
        """Read from a transformers (text) config."""
        scale = 1.0
        divide = getattr(config, "logits_scaling", None)
        if divide not in (None, 1, 1.0):
            scale /= float(divide)
        multiply = getattr(config, "logit_scale", None)
        if multiply not in (None, 1, 1.0):
            scale *= float(multiply)
        cap = getattr(config, "final_logit_softcapping", None)
        return cls(scale=scale, softcap=float(cap) if cap else None)

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply to logits [..., V] (plain torch, any dtype)."""
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def kl_options(self, vocab_kl, where: str) -> dict:
        """Keyword arguments that make ``vocab_kl`` apply this transform; refuses (naming the
        option) if that ``vocab_kl`` has no such argument."""
        if self.identity:
            return {}
        wanted = {"logit_scale": self.scale, "softcap": self.softcap}
        wanted = {k: v for k, v in wanted.items() if v is not None and not (k == "logit_scale" and v == 1.0)}
        params = inspect.signature(vocab_kl).parameters
        missing = [k for k in wanted if k not in params]
        if missing:
            raise UnsupportedArchitectureError(
                f"{where}: the model transforms its final logits ({', '.join(f'{k}={wanted[k]}' for k in missing)}) "
                f"and this release's fused vocabulary KL cannot apply that")
        return wanted
