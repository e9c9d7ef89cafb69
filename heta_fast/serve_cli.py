"""``heta-fast serve``: load the model once and serve it over HTTP (heta_fast.service).

Binds 127.0.0.1 unless told otherwise; ``--port 0`` takes a free port. The address is printed
(``heta-fast serve: http://HOST:PORT/``) once the model is loaded and the socket is bound.
Also runnable alone: ``python -m heta_fast.serve_cli ARGS`` (the same options).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from .cli_args import add_engine_args, add_model_args, config_from_args, int_at_least, load_args

MAX_PORT = 65535  # TCP ports are 16-bit; bind() raises OverflowError (with a traceback) beyond


def _port(text: str) -> int:
    """An argparse type: a TCP port in [0, 65535] (0: any free port), refused at parsing as a usage error."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be a port number in [0, {MAX_PORT}], got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def add_serve_parser(sub) -> argparse.ArgumentParser:
    """Add the ``serve`` command to a subparsers object; returns its parser."""
    from .service.settings import TOKEN_ENV, ServiceSettings

    d = ServiceSettings()
    p = sub.add_parser("serve", help="serve attributions over HTTP (a job queue, a web page at /)")
    add_model_args(p)
    add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=_port, default=8000, help="port (0: any free port)")
    p.add_argument("--token", default=None,
                   help=f"bearer token every endpoint but /healthz requires (default: ${TOKEN_ENV} if set)")
    p.add_argument("--cors-origin", action="append", default=[], help="an origin allowed by CORS (repeatable)")
    p.add_argument("--results-dir", default=None, help="write each finished result here as <id>.json")
    p.add_argument("--max-queue", type=int_at_least(1), default=d.max_queue, help="jobs waiting at most (then 429)")
    p.add_argument("--max-prompt-chars", type=int_at_least(1), default=d.max_prompt_chars,
                   help="longest prompt or target text (then 413)")
    p.add_argument("--max-body-bytes", type=int_at_least(1), default=d.max_body_bytes,
                   help="largest request body (then 413)")
    p.add_argument("--max-generate", type=int_at_least(1), default=d.max_generate, help="largest 'generate'")
    p.add_argument("--job-timeout", type=_positive_float, default=d.job_timeout, help="seconds a job may run")
    p.add_argument("--max-wait", type=_positive_float, default=d.max_wait, help="longest ?wait= in seconds")
    p.add_argument("--results-ttl", type=_positive_float, default=d.results_ttl,
                   help="seconds a finished result is kept")
    p.add_argument("--max-results", type=int_at_least(1), default=d.max_results, help="finished results kept at most")
    p.add_argument("--max-group", type=int_at_least(1), default=d.max_group,
                   help="queued jobs handed to the scheduler at once")
    p.add_argument("--batch-requests", dest="batching", default=d.batching, choices=("auto", "on", "off"),
                   help="whether such a group shares its model passes (auto: on CUDA only)")
    return p


def settings_from_args(args):
    """The :class:`ServiceSettings` of parsed ``serve`` arguments (token from the env var when not given)."""
    from .service.settings import TOKEN_ENV, ServiceSettings

    token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
    if args.results_dir is not None and not os.path.isdir(args.results_dir):
        from .errors import ConfigError

        raise ConfigError(f"--results-dir {args.results_dir!r} is not a folder")
    return ServiceSettings(max_queue=args.max_queue, max_prompt_chars=args.max_prompt_chars,
                           max_body_bytes=args.max_body_bytes, max_generate=args.max_generate,
                           job_timeout=args.job_timeout, max_wait=args.max_wait, results_ttl=args.results_ttl,
                           max_results=args.max_results, max_group=args.max_group, batching=args.batching,
                           token=token,
                           cors_origins=tuple(args.cors_origin), results_dir=args.results_dir)


def run_serve(args) -> int:
    """Load the model, bind, print the address, serve until interrupted (SIGINT/SIGTERM)."""
    try:
        import uvicorn

        from .service import create_app
    except ImportError as exc:
        from .errors import ConfigError

        raise ConfigError(f"heta-fast serve needs the 'service' extra (pip install 'heta-fast[service]'): {exc}")
    from .allocator import keep_freed_memory
    from .cli import _quiet_transformers
    from .engine import Attributor

    _quiet_transformers()
    settings, config, load = settings_from_args(args), config_from_args(args), load_args(args)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))  # before loading: a taken port fails fast
    if args.process_is_ours:  # its worker thread's heap would give freed blocks back
        keep_freed_memory()
    attributor = Attributor.from_pretrained(args.model, config=config, **load)
    app = create_app(attributor, settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"heta-fast serve: http://{shown}:{port}/", flush=True)
    if settings.token:
        print("heta-fast serve: token required (the page asks for it once; programs send 'Authorization: Bearer')",
              flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m heta_fast.serve_cli ARGS``: ``heta-fast serve ARGS`` (heta_fast.cli.main), the
    process heta-fast's own when ``argv`` is None."""
    from .cli import main as heta_fast_main

    return heta_fast_main(["serve", *(sys.argv[1:] if argv is None else argv)], process_is_ours=argv is None)


if __name__ == "__main__":
    sys.exit(main())
