"""HETAConfig: every knob of the engine, validated on construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .components import COMPONENTS
from .errors import ConfigError
from .memory import DEFAULT_MEMORY_BUDGET

MASK_SCHEMES = ("zero", "mean", "pad", "unk")
ESTIMATORS = ("exact", "probing", "sketch")


@dataclass(frozen=True)
class HETAConfig:
    """Configuration of one HETA attribution.

    Attr_i = M_T[i] * (beta * S_i + gamma * I_i); see docs/method.md. Every field changes what
    is computed (or, for memory_budget / max_batch / cuda_graphs, only in what chunks and how);
    an invalid value raises ``ConfigError`` on construction. Where the model runs and in which
    dtype are loading arguments (``Attributor.from_pretrained(dtype=..., device=...)``), not
    configuration. An Attributor's config can be overridden per call (``attribute(..., config=)``).
    """

    beta: float = 0.5
    gamma: float = 0.5
    components: tuple[str, ...] = COMPONENTS
    num_probes: int = 10
    # Curvature estimator (docs/method.md §2): "probing" (default: probing_repeats x
    # probing_patterns HVPs whatever the length), "exact" (the paper's, n x num_probes HVPs),
    # "sketch" (rank-sketch_rank Nystrom, sketch_rank HVPs).
    estimator: str = "probing"
    probing_patterns: int = 8
    probing_repeats: int = 2
    sketch_rank: int = 64
    # Capture the batched HVP in CUDA graphs (CUDA only; ignored on the CPU).
    cuda_graphs: bool = True
    seed: int = 0
    mask_scheme: str = "zero"
    window_size: int = 0
    window_overlap: float = 0.5
    layer_subset: int = 0
    use_fisher: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    # How many masked variants / probe vectors go through the model in one batch at most.
    max_batch: int = 32

    def __post_init__(self) -> None:
        comps = self.components
        if isinstance(comps, str):
            comps = (comps,)
        comps = tuple(comps)
        object.__setattr__(self, "components", comps)
        _check(len(comps) > 0, "components must be a non-empty subset of %s" % (COMPONENTS,))
        for c in comps:
            _check(c in COMPONENTS, f"unknown component {c!r}; choose from {COMPONENTS}")
        _check(len(set(comps)) == len(comps), f"components has duplicates: {comps}")
        for name in ("beta", "gamma"):
            v = getattr(self, name)
            _check(_is_number(v) and v >= 0 and v == v and v != float("inf"),
                   f"{name} must be a finite number >= 0, got {v!r}")
        _check(_is_int(self.num_probes) and self.num_probes >= 1,
               f"num_probes must be an integer >= 1, got {self.num_probes!r}")
        _check(self.estimator in ESTIMATORS,
               f"unknown estimator {self.estimator!r}; choose from {ESTIMATORS}")
        for name in ("probing_patterns", "probing_repeats", "sketch_rank"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        _check(isinstance(self.cuda_graphs, bool), f"cuda_graphs must be a bool, got {self.cuda_graphs!r}")
        _check(_is_int(self.seed), f"seed must be an integer, got {self.seed!r}")
        _check(self.mask_scheme in MASK_SCHEMES,
               f"unknown mask_scheme {self.mask_scheme!r}; choose from {MASK_SCHEMES}")
        _check(_is_int(self.window_size) and self.window_size >= 0,
               f"window_size must be an integer >= 0 (0 = no windowing), got {self.window_size!r}")
        _check(_is_number(self.window_overlap) and 0.0 <= self.window_overlap < 1.0,
               f"window_overlap must be in [0, 1), got {self.window_overlap!r}")
        _check(_is_int(self.layer_subset) and self.layer_subset >= 0,
               f"layer_subset must be an integer >= 0 (0 = all layers), got {self.layer_subset!r}")
        _check(isinstance(self.use_fisher, bool), f"use_fisher must be a bool, got {self.use_fisher!r}")
        _check(_is_int(self.memory_budget) and self.memory_budget > 0,
               f"memory_budget must be a positive number of bytes, got {self.memory_budget!r}")
        _check(_is_int(self.max_batch) and self.max_batch >= 1,
               f"max_batch must be an integer >= 1, got {self.max_batch!r}")

    def replace(self, **changes) -> "HETAConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["components"] = list(self.components)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HETAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown HETAConfig fields: {sorted(unknown)}")
        d = dict(d)
        if "components" in d:
            d["components"] = tuple(d["components"])
        return cls(**d)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
