"""HETAConfig: every knob of the engine, validated on construction."""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from .combine import TERM_SCALES
from .components import COMPONENTS
from .errors import ConfigError
from .memory import DEFAULT_MEMORY_BUDGET
from .precision import PRECISIONS

MASK_SCHEMES = ("zero", "mean", "pad", "unk")
ESTIMATORS = ("exact", "probing", "sketch")
INFORMATION_ESTIMATORS = ("exact", "fisher", "span")
TEMPLATE_TOKENS = ("condition", "attribute")
SINK_MODES = ("keep", "exclude")
SINK_TOKENS = ("none", "bos", "eos")
# Upper bound of every count (probes, patterns, batch, window, layers): a tensor dimension.
MAX_COUNT = 2**31 - 1
# The curvature signal seeds torch generators with seed * 65537 + a stream constant, which
# must stay below 2**64.
MAX_SEED = 2**47 - 1
_INT_FIELDS = ("num_probes", "probing_patterns", "probing_repeats", "sketch_rank", "seed", "window_size",
               "layer_subset", "memory_budget", "max_batch", "information_rank",
               "information_span")


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
    # Which model stages run their matrix products in bf16 (heta_fast/precision.py): "float32",
    # "bfloat16" (autocast), "bfloat16-split" (the forward stage's linears as split-bf16 products,
    # about float32's accuracy) or "auto" (bf16 only where the device has it natively and the
    # stage's measured quality gate was met). Accumulations stay float32 whatever it says.
    precision: str = "float32"
    # Capture the batched HVP in CUDA graphs (CUDA only; ignored on the CPU).
    cuda_graphs: bool = True
    seed: int = 0
    mask_scheme: str = "zero"
    # Information estimator (docs/method.md §3): "exact" (the masked passes, n(n+1)/2
    # token-positions), "fisher" (the KL's second-order expansion: information_rank backward
    # passes per target whatever n is) or "span" (masked passes that recompute only the
    # information_span positions after the masked token and before the first target, the rest
    # read unmasked: about n * (2 * information_span + T) token-positions for T targets). Both approximations
    # are measured in EVALUATION.md.
    information_estimator: str = "exact"
    information_rank: int = 8
    information_span: int = 8
    window_size: int = 0
    window_overlap: float = 0.5
    layer_subset: int = 0
    use_fisher: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    # How many masked variants / probe vectors go through the model in one batch at most.
    max_batch: int = 32
    # A chat prompt's template tokens (BOS, role markers, separators; heta_fast/chat.py):
    # "condition" (inputs only: their columns of every score are 0) or "attribute" (like content).
    template_tokens: str = "condition"
    # How S and I are put on one scale before beta and gamma weigh them (heta_fast/combine.py):
    # "raw" (the paper's sum), "max", "simplex" or "rank" per target row.
    term_scale: str = "raw"
    # Attention sinks (docs/method.md §1): special tokens and positions receiving more than
    # sink_threshold of the rollout's attention on average over layers. "keep" (the paper's gate;
    # they are still reported) or "exclude" (no gate mass; the rest renormalised).
    sinks: str = "keep"
    sink_threshold: float = 0.25
    # A sink token put before the context (docs/method.md §1, heta_fast/request.py): "none", or
    # the tokenizer's "bos" / "eos" token, for models whose tokenizer starts the context with no
    # special token. It becomes context token 0 (special, so a sink); the model's input changes.
    sink_token: str = "none"

    def __new__(cls, *args, **fields):
        # An unknown keyword is a ConfigError naming it (not the dataclass __init__'s TypeError).
        _check_names(fields)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        comps = self.components
        if isinstance(comps, str):
            comps = (comps,)
        _check(isinstance(comps, (tuple, list)),
               f"components must be a component name or a list of them (subset of {COMPONENTS}), got {_show(comps)}")
        comps = tuple(comps)
        object.__setattr__(self, "components", comps)
        _check(len(comps) > 0, "components must be a non-empty subset of %s" % (COMPONENTS,))
        for c in comps:
            _check(isinstance(c, str) and c in COMPONENTS, f"unknown component {_show(c)}; choose from {COMPONENTS}")
        _check(len(set(comps)) == len(comps), f"components has duplicates: {comps}")
        for name in ("beta", "gamma", "window_overlap", "sink_threshold"):
            self._normalise(name, _is_number, float)
        for name in _INT_FIELDS:
            self._normalise(name, _is_int, int)
        for name in ("beta", "gamma"):
            v = getattr(self, name)
            _check(_is_number(v) and v >= 0 and v == v and v != float("inf"),
                   f"{name} must be a finite number >= 0, got {_show(v)}")
        _check(_is_int(self.num_probes) and 1 <= self.num_probes <= MAX_COUNT,
               f"num_probes must be an integer in [1, {MAX_COUNT}], got {_show(self.num_probes)}")
        _check(isinstance(self.estimator, str) and self.estimator in ESTIMATORS,
               f"unknown estimator {_show(self.estimator)}; choose from {ESTIMATORS}")
        for name in ("probing_patterns", "probing_repeats", "sketch_rank"):
            v = getattr(self, name)
            _check(_is_int(v) and 1 <= v <= MAX_COUNT, f"{name} must be an integer in [1, {MAX_COUNT}], got {_show(v)}")
        _check(isinstance(self.precision, str) and self.precision in PRECISIONS,
               f"unknown precision {_show(self.precision)}; choose from {PRECISIONS}")
        _check(isinstance(self.cuda_graphs, bool), f"cuda_graphs must be a bool, got {_show(self.cuda_graphs)}")
        _check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED,
               f"seed must be an integer in [0, 2**47 - 1], got {_show(self.seed)}")
        _check(isinstance(self.mask_scheme, str) and self.mask_scheme in MASK_SCHEMES,
               f"unknown mask_scheme {_show(self.mask_scheme)}; choose from {MASK_SCHEMES}")
        _check(isinstance(self.information_estimator, str) and self.information_estimator in INFORMATION_ESTIMATORS,
               f"unknown information_estimator {_show(self.information_estimator)}; "
               f"choose from {INFORMATION_ESTIMATORS}")
        _check(_is_int(self.information_rank) and 1 <= self.information_rank <= MAX_COUNT,
               f"information_rank must be an integer in [1, {MAX_COUNT}], got {_show(self.information_rank)}")
        _check(_is_int(self.information_span) and 1 <= self.information_span <= MAX_COUNT,
               f"information_span must be an integer in [1, {MAX_COUNT}], got {_show(self.information_span)}")
        _check(_is_int(self.window_size) and 0 <= self.window_size <= MAX_COUNT,
               f"window_size must be an integer in [0, {MAX_COUNT}] (0 = no windowing), got {_show(self.window_size)}")
        _check(_is_number(self.window_overlap) and 0.0 <= self.window_overlap < 1.0,
               f"window_overlap must be in [0, 1), got {_show(self.window_overlap)}")
        _check(_is_int(self.layer_subset) and 0 <= self.layer_subset <= MAX_COUNT,
               f"layer_subset must be an integer >= 0 (0 = all layers), got {_show(self.layer_subset)}")
        _check(isinstance(self.use_fisher, bool), f"use_fisher must be a bool, got {_show(self.use_fisher)}")
        _check(_is_int(self.memory_budget) and 0 < self.memory_budget < 2**63,
               f"memory_budget must be a positive number of bytes (an integer), got {_show(self.memory_budget)}")
        _check(_is_int(self.max_batch) and 1 <= self.max_batch <= MAX_COUNT,
               f"max_batch must be an integer in [1, {MAX_COUNT}], got {_show(self.max_batch)}")
        _check(isinstance(self.sinks, str) and self.sinks in SINK_MODES,
               f"unknown sinks {_show(self.sinks)}; choose from {SINK_MODES}")
        _check(isinstance(self.sink_token, str) and self.sink_token in SINK_TOKENS,
               f"unknown sink_token {_show(self.sink_token)}; choose from {SINK_TOKENS}")
        _check(_is_number(self.sink_threshold) and 0.0 < self.sink_threshold <= 1.0,
               f"sink_threshold must be in (0, 1], got {_show(self.sink_threshold)}")
        _check(isinstance(self.term_scale, str) and self.term_scale in TERM_SCALES,
               f"unknown term_scale {_show(self.term_scale)}; choose from {TERM_SCALES}")
        _check(isinstance(self.template_tokens, str) and self.template_tokens in TEMPLATE_TOKENS,
               f"unknown template_tokens {_show(self.template_tokens)}; choose from {TEMPLATE_TOKENS}")

    def _normalise(self, name: str, accepts, kind) -> None:
        """Numbers of other types (np.int64, np.float32, an int weight) become the Python ``int`` /
        ``float`` they hold; a number too large for a float is refused."""
        v = getattr(self, name)
        if accepts(v) and type(v) is not kind:
            try:
                object.__setattr__(self, name, kind(v))
            except OverflowError:
                raise ConfigError(f"{name} must be a finite number, got {_show(v)}") from None

    def check_for_model(self, n_layers: int) -> "HETAConfig":
        """Raise ``ConfigError`` for a value this model cannot run (``layer_subset`` beyond its layers)."""
        _check(self.layer_subset <= n_layers,
               f"layer_subset={self.layer_subset} but the model has only {n_layers} decoder layers")
        return self

    def replace(self, **changes) -> "HETAConfig":
        """A copy with some fields changed (validated again)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["components"] = list(self.components)
        return d

    @classmethod
    def completed(cls, d: Mapping) -> dict:
        """A config mapping an earlier heta-fast recorded (a results file, a run's manifest), in
        today's fields: a field it does not name was added after it was written, and a field is
        only ever added with the earlier behaviour as its default, so it counts as that default.
        Names this version does not know are kept (so they compare unequal to any config of today).
        The one rule for "was this output written with these settings" across versions."""
        return {**cls().to_dict(), **d}

    @classmethod
    def from_dict(cls, d: dict) -> "HETAConfig":
        """The config of ``to_dict()``'s mapping; unknown fields and bad values raise ``ConfigError``."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"HETAConfig.from_dict takes a mapping of fields, got {type(d).__name__}")
        _check_names(d)
        return cls(**d)


def as_config(config, default: HETAConfig | None = None) -> HETAConfig | None:
    """``config`` when it is a HETAConfig, ``default`` when it is None, else ``ConfigError``."""
    if config is None:
        return default
    if not isinstance(config, HETAConfig):
        raise ConfigError(f"config must be a HETAConfig, got {type(config).__name__} "
                          "(HETAConfig.from_dict reads a dict)")
    return config


def _check_names(fields) -> None:
    known = {f.name for f in dataclasses.fields(HETAConfig)}
    unknown = [k for k in fields if k not in known]
    if unknown:
        raise ConfigError(f"unknown HETAConfig fields: {', '.join(sorted(repr(k) for k in unknown))}")


def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not _is_bool(v)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not _is_bool(v)


def _is_bool(v) -> bool:
    return isinstance(v, bool) or type(v).__name__ in ("bool", "bool_")
