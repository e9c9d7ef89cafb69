"""Command-line arguments shared by every command that loads a model or attributes.

Defaults, and the names each option accepts, are read from :mod:`heta_fast.config`, so the CLI
and the API cannot disagree.
"""
from __future__ import annotations

import argparse
import dataclasses

from .combine import TERM_SCALES
from .components import COMPONENTS
from .config import (
    ESTIMATORS,
    INFORMATION_ESTIMATORS,
    MASK_SCHEMES,
    SINK_MODES,
    SINK_TOKENS,
    TEMPLATE_TOKENS,
    HETAConfig,
)
from .precision import PRECISIONS


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, ``heta-fast: error: ...``, exit status 2
    (like every other error a user can cause); ``--help`` still prints the full usage."""

    def error(self, message: str):
        # Arguments are quoted into the message: their control characters (a newline) are escaped.
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(2, f"heta-fast: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``, refused with a message naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _default(name: str):
    return {f.name: f.default for f in dataclasses.fields(HETAConfig)}[name]


def one_of(names, notes: dict | None = None) -> str:
    """``names`` as help text, ``a | b (note) | c``; a note must name one of them (so that a name
    added to the configuration shows up in the help, and a removed one cannot linger)."""
    notes = notes or {}
    stray = sorted(set(notes) - set(names))
    if stray:
        raise ValueError(f"help notes for unknown names {stray}; the names are {list(names)}")
    return " | ".join(f"{n} ({notes[n]})" if n in notes else n for n in names)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --dtype, --device: what to load and where."""
    p.add_argument("--model", default=None, help="model alias (default: smollm2-135m), .gguf file, folder or hub id")
    p.add_argument("--dtype", default="float32", help="dtype of the weights: float32 | float64 | float16 | bfloat16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")


def add_engine_args(p: argparse.ArgumentParser, components: bool = True) -> None:
    """The HETA options every attributing command takes (``components``: also --components)."""
    p.add_argument("--beta", type=float, default=_default("beta"), help="weight of the curvature term")
    p.add_argument("--gamma", type=float, default=_default("gamma"), help="weight of the information term")
    if components:
        p.add_argument("--components", default=",".join(COMPONENTS),
                       help=f"comma-separated subset of {','.join(COMPONENTS)}")
    p.add_argument("--estimator", default=_default("estimator"),
                   help="curvature estimator: " + one_of(ESTIMATORS))
    p.add_argument("--num-probes", type=int, default=_default("num_probes"),
                   help="Hutchinson probes per token of the exact estimator")
    p.add_argument("--probing-patterns", type=int, default=_default("probing_patterns"),
                   help="sign patterns of the probing estimator (products per target: patterns x repeats)")
    p.add_argument("--probing-repeats", type=int, default=_default("probing_repeats"),
                   help="random vectors per sign pattern of the probing estimator")
    p.add_argument("--sketch-rank", type=int, default=_default("sketch_rank"),
                   help="rank of the sketch estimator (its products per target)")
    p.add_argument("--window-size", type=int, default=_default("window_size"),
                   help="context tokens per window for long inputs (0: no windows)")
    p.add_argument("--window-overlap", type=float, default=_default("window_overlap"),
                   help="overlap of consecutive windows, in [0, 1)")
    p.add_argument("--mask-scheme", default=_default("mask_scheme"), help=one_of(MASK_SCHEMES))
    p.add_argument("--precision", default=_default("precision"),
                   help=one_of(PRECISIONS) + ": the model stages' matrix products (heta_fast/precision.py)")
    p.add_argument("--information-estimator", default=_default("information_estimator"),
                   help=one_of(INFORMATION_ESTIMATORS, {"exact": "masked passes", "fisher": "second-order estimate, "
                                                        "cost linear in n", "span": "masked passes recomputing "
                                                        "--information-span positions; docs/method.md §3"}))
    p.add_argument("--information-rank", type=int, default=_default("information_rank"),
                   help="eigenpairs kept by --information-estimator fisher (backward passes per target)")
    p.add_argument("--information-span", type=int, default=_default("information_span"),
                   help="positions after the masked token and before the first target that "
                        "--information-estimator span recomputes")
    p.add_argument("--term-scale", default=_default("term_scale"),
                   help="how S and I meet before beta/gamma: " + one_of(TERM_SCALES, {"raw": "the paper's sum"}))
    p.add_argument("--sinks", default=_default("sinks"),
                   help="attention sinks in the flow gate: "
                        + one_of(SINK_MODES, {"keep": "the paper's gate", "exclude": "no gate mass"}))
    p.add_argument("--sink-threshold", type=float, default=_default("sink_threshold"),
                   help="received attention share (mean over layers) above which a position is a sink")
    p.add_argument("--sink-token", default=_default("sink_token"),
                   help="a sink token before the context: " + one_of(SINK_TOKENS) + " (the tokenizer's; for models "
                        "whose context starts with no special token)")
    p.add_argument("--template-tokens", default=_default("template_tokens"),
                   help="chat prompts: " + one_of(TEMPLATE_TOKENS, {"condition": "template tokens are inputs only"}))
    p.add_argument("--seed", type=int, default=_default("seed"),
                   help="seed of every random draw (the curvature probes; eval: also the Soft-NS/NC masks)")


def config_from_args(args):
    """The :class:`~heta_fast.config.HETAConfig` the parsed arguments ask for (validated)."""
    fields = dict(beta=args.beta, gamma=args.gamma, estimator=args.estimator, num_probes=args.num_probes,
                  probing_patterns=args.probing_patterns, probing_repeats=args.probing_repeats,
                  sketch_rank=args.sketch_rank,
                  window_size=args.window_size, window_overlap=args.window_overlap, mask_scheme=args.mask_scheme,
                  information_estimator=args.information_estimator, information_rank=args.information_rank,
                  information_span=args.information_span, precision=args.precision,
                  seed=args.seed, template_tokens=args.template_tokens,
                  term_scale=args.term_scale, sinks=args.sinks, sink_threshold=args.sink_threshold,
                  sink_token=args.sink_token)
    if getattr(args, "components", None) is not None:
        fields["components"] = tuple(c.strip() for c in args.components.split(",") if c.strip())
    return HETAConfig(**fields)


def load_args(args) -> dict:
    """Keyword arguments of ``Attributor.from_pretrained`` besides the config, checked (dtype
    known, device present on this machine; ``ConfigError`` otherwise) without loading anything."""
    from .engine import resolve_device
    from .model.loading import check_device, check_load_args

    check_load_args(args.model, args.dtype)
    check_device(resolve_device(args.device))
    return {"dtype": args.dtype, "device": args.device}
