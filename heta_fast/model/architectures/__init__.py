"""Architecture module maps, one :class:`ArchitectureSpec` per family, in a public registry.

A family is found by its transformers ``model_type``. To add one without editing the package::

    from heta_fast.model import ArchitectureSpec, register_architecture
    register_architecture(ArchitectureSpec(name="myarch", model_types=("myarch",), layers=...,
                                           attention=..., values=..., out_proj=...))

(see :class:`ArchitectureSpec` for what each entry must give). The built-in families are
registered by this module, from the files beside it.
"""
from __future__ import annotations

from ...errors import UnsupportedArchitectureError
from . import gpt2, gptj, llama, phi3
from .base import ArchitectureSpec, HeadLayout, head_layout_from_config

_BY_MODEL_TYPE: dict[str, ArchitectureSpec] = {}


def register_architecture(spec: ArchitectureSpec, *, replace: bool = False) -> ArchitectureSpec:
    """Make ``spec`` the module map of every model type it lists.

    A model type that already has a map is refused unless ``replace=True``. Returns ``spec``.
    """
    if not isinstance(spec, ArchitectureSpec):
        raise TypeError(f"register_architecture takes an ArchitectureSpec, got {type(spec).__name__}")
    taken = [t for t in spec.model_types if t in _BY_MODEL_TYPE and _BY_MODEL_TYPE[t] is not spec]
    if taken and not replace:
        raise ValueError(f"model types {taken} already have a module map; pass replace=True to override")
    for t in spec.model_types:
        _BY_MODEL_TYPE[t] = spec
    return spec


for _spec in (llama.SPEC, gpt2.SPEC, gptj.SPEC, phi3.SPEC):
    register_architecture(_spec)


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_BY_MODEL_TYPE))


def spec_for_config(config) -> ArchitectureSpec:
    """The module map for a transformers config, or a clear error naming the architecture."""
    model_type = getattr(config, "model_type", None)
    spec = _BY_MODEL_TYPE.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} has no heta-fast module map (supported: "
            f"{', '.join(supported_model_types())}); describe it with heta_fast.model.ArchitectureSpec and "
            f"register it with heta_fast.model.register_architecture (README, 'Models')"
        )
    return spec


__all__ = ["ArchitectureSpec", "HeadLayout", "head_layout_from_config", "register_architecture",
           "spec_for_config", "supported_model_types"]
