"""The attribution methods ``heta-fast eval`` compares, by name.

Names (CLI and results): heta, saliency, input_x_gradient, integrated_gradients, rollout,
occlusion, reagent, and the HETA ablations heta_flow, heta_curvature, heta_information, heta_ungated
("all" is these); the HETA sink / term-scale variants heta_nosink, heta_max, heta_simplex,
heta_rank, heta_nosink_max, heta_nosink_simplex, heta_nosink_rank ("grid" is heta and these).
"""
from __future__ import annotations

from typing import Iterable

from ..errors import ConfigError
from ..result import Attribution
from . import baselines
from .baselines.heta_variants import VARIANTS

ALL = ("heta", "saliency", "input_x_gradient", "integrated_gradients", "rollout", "occlusion",
       "reagent", "heta_flow", "heta_curvature", "heta_information", "heta_ungated")
GRID = ("heta",) + tuple(name for name, variant in VARIANTS.items() if variant.sinks is not None)
METHODS = ALL + GRID[1:]
GROUPS = {"all": ALL, "grid": GRID}
ALIASES = {
    "ig": "integrated_gradients", "gradient_x_input": "input_x_gradient", "ixg": "input_x_gradient",
    "grad": "saliency", "gradient": "saliency", "attention_rollout": "rollout",
    "loo": "occlusion", "leave_one_out": "occlusion",
}
# Signed methods: a negative score means the token works against the target (ReAGent's
# σ-normalised scores are non-negative: not signed).
SIGNED = frozenset({"input_x_gradient", "integrated_gradients", "occlusion"})


def resolve_methods(spec: str | Iterable[str]) -> list[str]:
    """'heta,ig,rollout' (or a list; 'all' for every method but the grid variants, 'grid' for
    heta and its sink / term-scale variants) -> canonical names, in order, no duplicates."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = str(raw).strip().lower().replace("-", "_")
        if not name:
            continue
        names = list(GROUPS[name]) if name in GROUPS else [ALIASES.get(name, name)]
        for n in names:
            if n not in METHODS:
                raise ConfigError(f"unknown method {raw.strip()!r}; choose from {', '.join(METHODS)} "
                                  f"(aliases: {', '.join(sorted(ALIASES))})")
            if n not in out:
                out.append(n)
    if not out:
        raise ConfigError("no methods given")
    return out


def run_methods(attributor, prompt, target, methods: Iterable[str], ig_steps: int = 32) -> dict[str, Attribution]:
    """Attribute (prompt, target) with every method; the HETA variants share one engine run."""
    methods = resolve_methods(methods)
    out: dict[str, Attribution] = {}
    variants = [m for m in methods if m in VARIANTS]
    if variants:
        out.update(baselines.heta_variants(attributor, prompt, target, variants))
    for m in methods:
        if m in VARIANTS:
            continue
        if m == "integrated_gradients":
            out[m] = baselines.integrated_gradients(attributor, prompt, target, steps=ig_steps)
        else:
            out[m] = getattr(baselines, m)(attributor, prompt, target)
    return {m: out[m] for m in methods}
