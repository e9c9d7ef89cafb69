"""HETA, its ablations and its sink / term-scale variants, all from one engine run per example.

The components of HETA are computed independently of one another (the curvature probes are one
seeded draw), so the engine run with the union of the components a set of variants needs gives
each variant exactly what the engine would give when run with that variant's components alone:

    heta              M_T ⊙ (β S + γ I)     (the attributor's own sinks and term_scale)
    heta_flow         M_T                   (flow gate only)
    heta_curvature    β S                   (curvature only, ungated)
    heta_information  γ I                   (information only, ungated)
    heta_ungated      β S + γ I             (HETA without the gate)

The grid of issue 17 §2-§3 (docs/method.md §1 "Attention sinks", §4) also comes from that run:
``sinks`` and ``term_scale`` act after the signals (the gate of ``sinks="exclude"`` is the kept
gate with the sinks zeroed and each row renormalised, and the run reports the sinks), so

    heta_nosink       sinks="exclude", term_scale="raw"
    heta_max / heta_simplex / heta_rank              sinks="keep",    term_scale=max/simplex/rank
    heta_nosink_max / heta_nosink_simplex / heta_nosink_rank   sinks="exclude", the same scales

A variant's reported time is the shared forward pass plus the time of its own components.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from ...combine import combine
from ...components import COMPONENTS
from ...model.exclusive import holding_the_model
from ...result import Attribution
from ...signals.flow import exclude_sinks


@dataclass(frozen=True)
class Variant:
    """The components a variant combines, and its sinks / term_scale (None: the attributor's)."""

    components: tuple[str, ...]
    sinks: str | None = None
    term_scale: str | None = None


VARIANTS = {
    "heta": Variant(COMPONENTS),
    "heta_flow": Variant(("flow",)),
    "heta_curvature": Variant(("curvature",)),
    "heta_information": Variant(("information",)),
    "heta_ungated": Variant(("curvature", "information")),
    "heta_nosink": Variant(COMPONENTS, "exclude", "raw"),
    **{f"heta{'_nosink' if sinks == 'exclude' else ''}_{scale}": Variant(COMPONENTS, sinks, scale)
       for sinks in ("keep", "exclude") for scale in ("max", "simplex", "rank")},
}


@holding_the_model
def heta_variants(attributor, prompt, target, names: Iterable[str]) -> dict[str, Attribution]:
    """Run the engine once with the components the variants ``names`` need; derive each variant."""
    names = list(names)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown HETA variants {unknown}")
    needed = tuple(c for c in COMPONENTS if any(c in VARIANTS[n].components for n in names))
    base = attributor.config
    # The run keeps the sinks in the gate: every variant's gate is derived from the kept one.
    cfg = base.replace(components=needed, sinks="keep")
    full = attributor.attribute(prompt, target, config=cfg)
    attributed = None if full.attributed is None else torch.tensor(full.attributed)
    out = {}
    for name in names:
        variant = VARIANTS[name]
        comps = variant.components
        sinks, scale = variant.sinks or base.sinks, variant.term_scale or base.term_scale
        parts = {c: getattr(full, c) if c in comps else None for c in COMPONENTS}
        if parts["flow"] is not None and sinks == "exclude":
            parts["flow"] = exclude_sinks(parts["flow"], torch.tensor(full.sinks))
        scores = combine(parts["flow"], parts["curvature"], parts["information"], base.beta, base.gamma, scale,
                         attributed)
        seconds = full.timings.get("forward", 0.0) + sum(full.timings.get(c, 0.0) for c in comps)
        out[name] = Attribution(
            scores=scores, flow=parts["flow"], curvature=parts["curvature"], information=parts["information"],
            context_tokens=list(full.context_tokens), target_tokens=list(full.target_tokens),
            context_ids=full.context_ids, target_ids=full.target_ids, prompt=full.prompt, method=name,
            model=full.model, model_dtype=full.model_dtype, device=full.device,
            special=full.special, attributed=full.attributed, sinks=full.sinks, segments=full.segments,
            config=cfg.replace(components=comps, sinks=sinks, term_scale=scale).to_dict(),
            timings={**{k: full.timings[k] for k in ("forward",) + comps if k in full.timings},
                     "total": round(seconds, 6)},
        )
    return out
