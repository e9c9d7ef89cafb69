"""HETA and its ablations, all from one engine run per example.

The components of HETA are computed independently of one another (the curvature probes are one
seeded draw), so the engine run with the union of the components a set of variants needs gives
each variant exactly what the engine would give when run with that variant's components alone:

    heta              M_T ⊙ (β S + γ I)
    heta_flow         M_T               (flow gate only)
    heta_curvature    β S               (curvature only, ungated)
    heta_information  γ I               (information only, ungated)
    heta_ungated      β S + γ I         (HETA without the gate)

A variant's reported time is the shared forward pass plus the time of its own components.
"""
from __future__ import annotations

from typing import Iterable

from ...combine import combine
from ...components import COMPONENTS
from ...result import Attribution

VARIANTS = {
    "heta": COMPONENTS,
    "heta_flow": ("flow",),
    "heta_curvature": ("curvature",),
    "heta_information": ("information",),
    "heta_ungated": ("curvature", "information"),
}


def heta_variants(attributor, prompt, target, names: Iterable[str]) -> dict[str, Attribution]:
    """Run the engine once with the components the variants ``names`` need; derive each variant."""
    names = list(names)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown HETA variants {unknown}")
    needed = tuple(c for c in COMPONENTS if any(c in VARIANTS[n] for n in names))
    cfg = attributor.config.replace(components=needed)
    full = attributor.attribute(prompt, target, config=cfg)
    out = {}
    for name in names:
        comps = VARIANTS[name]
        parts = {c: getattr(full, c) if c in comps else None for c in COMPONENTS}
        scores = combine(parts["flow"], parts["curvature"], parts["information"], cfg.beta, cfg.gamma, cfg.term_scale)
        seconds = full.timings.get("forward", 0.0) + sum(full.timings.get(c, 0.0) for c in comps)
        out[name] = Attribution(
            scores=scores, flow=parts["flow"], curvature=parts["curvature"], information=parts["information"],
            context_tokens=list(full.context_tokens), target_tokens=list(full.target_tokens),
            context_ids=full.context_ids, target_ids=full.target_ids, prompt=full.prompt, method=name,
            model=full.model, model_dtype=full.model_dtype, device=full.device,
            config=cfg.replace(components=comps).to_dict(),
            timings={**{k: full.timings[k] for k in ("forward",) + comps if k in full.timings},
                     "total": round(seconds, 6)},
        )
    return out
