"""Architecture adapters: one module map per architecture family.

To support a new architecture, add ``heta_fast/adapters/<family>.py`` defining ``SPEC`` (an
:class:`~heta_fast.adapters.base.ArchitectureSpec`) and list it in ``_SPECS`` below.
"""
from __future__ import annotations

from ..errors import UnsupportedArchitectureError
from . import gpt2, gptj, llama, phi3
from .base import ArchitectureSpec, HeadLayout, head_layout_from_config

_SPECS = (llama.SPEC, gpt2.SPEC, gptj.SPEC, phi3.SPEC)
_BY_MODEL_TYPE = {t: spec for spec in _SPECS for t in spec.model_types}


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_BY_MODEL_TYPE))


def spec_for_config(config) -> ArchitectureSpec:
    """The adapter for a transformers config, or a clear error naming the architecture."""
    model_type = getattr(config, "model_type", None)
    spec = _BY_MODEL_TYPE.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} has no heta-fast adapter (supported: "
            f"{', '.join(supported_model_types())}); add one as heta_fast/adapters/<family>.py "
            f"defining SPEC = ArchitectureSpec(...) and register it in heta_fast/adapters/__init__.py"
        )
    return spec


__all__ = ["ArchitectureSpec", "HeadLayout", "head_layout_from_config", "spec_for_config", "supported_model_types"]
