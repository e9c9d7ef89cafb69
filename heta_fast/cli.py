"""The ``heta-fast`` command line: attribute, demo, eval.

Errors a user can cause print one line on stderr and exit with status 2; they never show a
traceback. Progress goes to stderr (heta_fast.progress.TerminalProgress): on a terminal one line
rewritten in place and erased at the end, otherwise plain lines for phases that run 5 s or more;
``-q`` silences it. stdout carries the result only.
"""
from __future__ import annotations

import argparse
import os
import sys

from .cli_args import Parser, add_engine_args, add_model_args, config_from_args, int_at_least, load_args
from .serve_cli import add_serve_parser, run_serve  # heta-fast serve (issue 14)

DEMO_PROMPT = ("Photosynthesis primarily occurs in the leaves of the plant. Question: In which part "
               "of the plant does photosynthesis take place? Answer: the")
DEMO_TARGET = " leaves"


def _config_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_engine_args(p)
    p.add_argument("--top", type=int_at_least(0), default=5, help="how many top tokens to list")
    p.add_argument("--words", action="store_true", help="aggregate token scores into words")
    p.add_argument("--json", dest="json_out", default=None, help="write the result as JSON to this file")
    p.add_argument("--html", dest="html_out", default=None, help="write an HTML heatmap to this file")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress, no estimate and no model-cache notices on stderr (errors are still printed)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="heta-fast", description="Fast HETA token attribution for decoder-only LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    att = sub.add_parser("attribute", help="attribute a target continuation to its prompt")
    att.add_argument("--prompt", required=True, help="the context text (with --chat: the user's message)")
    answer = att.add_mutually_exclusive_group(required=True)
    answer.add_argument("--target", help="the continuation to attribute (one or more tokens)")
    answer.add_argument("--generate", type=int_at_least(1), metavar="N",
                        help="attribute the model's greedy continuation of up to N tokens instead of a target")
    att.add_argument("--chat", action="store_true",
                     help="send the prompt as a user message through the model's chat template")
    att.add_argument("--system", default=None, help="with --chat: a system message before the user's")
    _config_args(att)
    demo = sub.add_parser("demo", help="run the default model on a built-in example")
    _config_args(demo)
    from .eval_cli import add_eval_parser

    add_eval_parser(sub)
    from .run_cli import add_run_parser  # heta-fast run (issue 13)

    add_run_parser(sub)
    add_serve_parser(sub)
    return parser


def _quiet_transformers() -> None:
    # Weight-loading progress bars and advisory warnings would bury the result (and the
    # one-line error) that the command prints.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _run(args) -> int:
    from .errors import ConfigError
    from .files import check_writable
    from .inputs import check_text
    from .render import printable

    if args.command == "serve":
        return run_serve(args)
    if args.command == "run":  # heta-fast run (issue 13)
        from .run_cli import run_pipeline

        _quiet_transformers()
        return run_pipeline(args)
    if args.command == "eval":
        from .eval_cli import run_eval

        _quiet_transformers()
        return run_eval(args)
    from .engine import Attributor

    _quiet_transformers()

    # Everything that can be checked is checked before the model loads: options, output paths.
    config, load = config_from_args(args), load_args(args)
    outputs = [(path, flag) for path, flag in ((args.json_out, "--json"), (args.html_out, "--html")) if path]
    for path, flag in outputs:
        check_writable(path, f"{flag} file")
    if len(outputs) == 2 and os.path.realpath(args.json_out) == os.path.realpath(args.html_out):
        raise ConfigError(f"--json and --html name the same file {args.json_out}: the HTML would replace the JSON")
    prompt, target = (DEMO_PROMPT, DEMO_TARGET) if args.command == "demo" else (args.prompt, args.target)
    generate = getattr(args, "generate", None)
    check_text(prompt, "prompt")
    if target is not None:
        check_text(target, "target")
    messages = chat_messages(args, prompt)
    if messages is not None:
        prompt = None
    if args.command == "demo":
        print(f"prompt: {prompt!r}\ntarget: {target!r}", flush=True)
    from .progress import TerminalProgress

    reporter = None if args.quiet else TerminalProgress(sys.stderr)
    try:
        if reporter is not None:
            reporter.status(f"loading {args.model or 'smollm2-135m'} ...")
        attributor = Attributor.from_pretrained(args.model, config=config, **load)
        if generate is None:
            # Checks the request and the budget, even with -q.
            _announce(attributor, prompt, target, reporter, messages)
            result = attributor.attribute(prompt, target, progress=reporter, messages=messages)
        else:  # the target is known only once generated: progress without an estimate first
            result = attributor.generate_and_attribute(prompt, generate, progress=reporter, messages=messages)
    finally:
        if reporter is not None:
            reporter.close()
    # Files first: a terminal that cannot show the result must not cost the result.
    if args.json_out:
        result.to_json(args.json_out)
    if args.html_out:
        result.to_html(args.html_out)
    shown = result.aggregate("words") if args.words else result
    shown.show(k=args.top)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    print(f"time: {timings}")
    for path, _ in outputs:
        print(printable(f"wrote {path}"))
    return 0


def chat_messages(args, prompt) -> list[dict] | None:
    """``--chat``: the prompt as a user message, after ``--system`` if given; None otherwise
    (``--system`` without ``--chat`` is a usage error)."""
    from .errors import InputError

    system = getattr(args, "system", None)
    if not getattr(args, "chat", False):
        if system is not None:
            raise InputError("--system needs --chat")
        return None
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}]


def work_plan(attributor, prompt, target, messages=None) -> dict:
    """What ``attributor.attribute(prompt, target)`` will do, before it runs: the per-phase
    estimates (which also check the request and the memory budget), the estimated floating-point
    operations per phase (:func:`heta_fast.progress.work_flops`), the request's target tokens,
    the HVPs one target costs in each window, and the bytes of the model's weights."""
    from .progress import work_flops
    from .request import tokenize_request
    from .signals.curvature import products_needed
    from .windows import context_windows

    cfg, model = attributor.config, attributor.model
    estimates = attributor.estimate(prompt, target, messages=messages)
    req = tokenize_request(attributor.tokenizer, prompt, target, attributor.adapter.max_length,
                           attributor.adapter.vocab_size, messages, attributor.sink_id(cfg))
    n_ctx, n_tgt = req.n_context, int(req.target_ids.numel())
    windows = context_windows(n_ctx, cfg.window_size, cfg.window_overlap)
    per_target = tuple(products_needed(cfg, w.size) for w in windows) if "curvature" in cfg.components else ()
    # A window's input is its context up to its end plus target[:-1]; a masked variant at a
    # window's token recomputes, on average, half the window and the targets.
    hvp_tokens = sum(n_tgt * c * (w.stop + n_tgt - 1) for w, c in zip(windows, per_target))
    variant_tokens = (sum(round(w.size * (w.size / 2 + n_tgt)) for w in windows)
                      if "information" in cfg.components else 0)
    params = sum(p.numel() for p in model.parameters())
    work = {"forward": work_flops(params, n_ctx + n_tgt - 1, 0, 0), "flow": 0.0,
            "curvature": work_flops(params, 0, hvp_tokens, 0), "information": work_flops(params, 0, 0, variant_tokens)}
    return {"estimates": estimates, "work": {e.phase: work.get(e.phase, 0.0) for e in estimates},
            "targets": n_tgt, "hvps_per_target": per_target,
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def _announce(attributor, prompt, target, reporter, messages=None) -> None:
    """Configure ``reporter`` for this request; print the estimate first when the work is long."""
    from . import progress

    plan = work_plan(attributor, prompt, target, messages)
    if reporter is None:
        return
    reporter.targets, reporter.hvps_per_target = plan["targets"], plan["hvps_per_target"]
    reporter.phases, reporter.work = tuple(e.phase for e in plan["estimates"]), plan["work"]
    total = sum(plan["work"].values())
    if total > progress.ESTIMATE_THRESHOLD_FLOPS:
        first, *rest = progress.describe_estimate(plan["estimates"], total, plan["weight_bytes"])
        reporter.message("\n".join([f"heta-fast: {first} (more than {progress.ESTIMATE_THRESHOLD_FLOPS:.0e}; "
                                     "-q hides this)", *rest]))


def main(argv: list[str] | None = None, *, process_is_ours: bool | None = None) -> int:
    """The ``heta-fast`` command. ``argv=None`` (the console script, ``python -m heta_fast``): the
    process is heta-fast's own, so ``run`` and ``serve`` may make process-wide choices (the
    allocator's, heta_fast/allocator.py). With an explicit ``argv`` another program calls it in
    its own process, which keeps its settings. ``process_is_ours`` overrides that reading (a console
    entry point that builds ``argv`` itself, heta_fast/serve_cli.py)."""
    from .errors import HetaError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed in one line
        return exc.code if isinstance(exc.code, int) else 2
    args.process_is_ours = argv is None if process_is_ours is None else process_is_ours
    from .model.cache_entry import quiet_notices

    try:
        # -q: errors only, the model cache's notices (downloading, converting) too
        with quiet_notices(getattr(args, "quiet", False) or getattr(args, "no_progress", False)):
            return _run(args)
    except (HetaError, OSError) as exc:  # OSError: an unwritable output path and the like
        print(f"heta-fast: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("heta-fast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
