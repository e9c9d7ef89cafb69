"""Architecture module maps, one :class:`ArchitectureSpec` per family, in a public registry.

A family is found by its transformers ``model_type``. To add one without editing the package::

    from heta_fast.model import ArchitectureSpec, register_architecture
    register_architecture(ArchitectureSpec(name="myarch", model_types=("myarch",), layers=...,
                                           attention=..., values=..., out_proj=...))

(see :class:`ArchitectureSpec` for what each entry must give). The built-in families are
registered by this module, from the files beside it.
"""
from __future__ import annotations

from ...errors import ConfigError, UnsupportedArchitectureError
from . import gemma, gpt2, gpt_neox, gptj, llama, olmo2, phi3
from .base import ArchitectureSpec, HeadLayout, head_layout_from_config, text_config

_BY_MODEL_TYPE: dict[str, ArchitectureSpec] = {}
_BUILTIN: set[int] = set()


def _check_is_spec(spec, what: str) -> None:
    if not isinstance(spec, ArchitectureSpec):
        raise ConfigError(f"{what} an ArchitectureSpec, got {type(spec).__name__}")


def register_architecture(spec: ArchitectureSpec, *, replace: bool = False) -> ArchitectureSpec:
    """Make ``spec`` the module map of every model type it lists.

    A model type that already has a map is refused unless ``replace=True``. Returns ``spec``.
    Raises :class:`~heta_fast.errors.ConfigError` (a ``ValueError``) for anything but an
    :class:`ArchitectureSpec` and for a model type already taken.
    """
    _check_is_spec(spec, "register_architecture takes")
    taken = [t for t in spec.model_types if t in _BY_MODEL_TYPE and _BY_MODEL_TYPE[t] is not spec]
    if taken and not replace:
        raise ConfigError(f"model types {taken} already have a module map; pass replace=True to override")
    for t in spec.model_types:
        _BY_MODEL_TYPE[t] = spec
    return spec


for _spec in (llama.SPEC, *llama.SHAPED, llama.GRANITE, gpt2.SPEC, gptj.SPEC, phi3.SPEC, olmo2.SPEC,
              gemma.GEMMA, gemma.GEMMA2, gemma.GEMMA3_TEXT, gemma.GEMMA3, gpt_neox.SPEC):
    register_architecture(_spec)
    _BUILTIN.add(id(_spec))


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


def is_builtin(spec: ArchitectureSpec) -> bool:
    """Whether ``spec`` is one of heta-fast's own maps (tested per family, not verified at load)."""
    return id(spec) in _BUILTIN


def resolve_spec(adapter, spec: ArchitectureSpec | None = None) -> ArchitectureSpec:
    """The module map ``adapter`` reads its model through.

    ``spec`` given, or registered for the model type: used as it is if it is one of heta-fast's
    own, else after it verifies itself on the model (verify.py). Neither: the generic path
    (generic.py), which accepts only a discovered map that verifies itself.
    """
    from . import generic, verify

    if spec is None:
        spec = _BY_MODEL_TYPE.get(getattr(adapter.model.config, "model_type", None))
        if spec is None:
            return generic.discover(adapter)
    _check_is_spec(spec, "a module map is")
    if not is_builtin(spec):
        verify.verify_cached(adapter, spec)
    return spec


__all__ = ["ArchitectureSpec", "HeadLayout", "head_layout_from_config", "text_config", "is_builtin",
           "register_architecture", "resolve_spec", "spec_for_config", "supported_model_types"]
