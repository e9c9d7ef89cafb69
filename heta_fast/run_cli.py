"""``heta-fast run``: attribute a whole data set into a resumable output directory (docs/pipeline.md).

Kept apart from heta_fast/cli.py so that building the argument parser imports nothing heavy.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys

from .cli_args import add_engine_args, add_model_args, config_from_args, int_at_least, load_args

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
# The options of --ray. The parser leaves them None, so that one given without --ray is refused
# instead of ignored (check_modes); _run_ray passes the given ones, attribute_ray has the defaults.
RAY_OPTIONS = ("ray_address", "concurrency", "gpus_per_worker", "threads_per_worker", "memory_per_worker",
               "batch_size")


def add_run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="attribute every record of a data set into an output directory (resumable)",
                       description="Attribute every record of a JSONL, Parquet or CSV file (or a datasets data "
                                   "set) and write one row per record to Parquet (or JSONL) part files in "
                                   "--output. Rerunning the same command skips the ids already written.")
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", default=None, help="a .jsonl, .parquet or .csv file of records")
    src.add_argument("--dataset", default=None, metavar="NAME_OR_PATH",
                     help="a datasets data set saved with save_to_disk (or a hub name where reachable)")
    p.add_argument("--split", default=None, help="split of --dataset (needed when it has several)")
    p.add_argument("--output", required=True, help="output directory (created; continued when it exists)")
    p.add_argument("--id-field", default="id", help="record field holding the unique id (default id)")
    p.add_argument("--prompt-field", default="prompt", help="record field holding the prompt (default prompt)")
    p.add_argument("--target-field", default="target", help="record field holding the target (default target)")
    p.add_argument("--messages-field", default=None,
                   help="record field holding chat messages (a list of {role, content}), read instead of the prompt")
    p.add_argument("--generate", type=int_at_least(1), default=None, metavar="N",
                   help="no target field: generate up to N tokens greedily and attribute them")
    add_engine_args(p)
    p.add_argument("--memory-budget", default=None, metavar="BYTES",
                   help="bound on the bytes of every batch, e.g. 2G or 500M (default: the config's)")
    p.add_argument("--format", dest="fmt", default="parquet", choices=("parquet", "jsonl"), help="part file format")
    p.add_argument("--rows-per-part", type=int, default=64, help="records per part file (default 64)")
    p.add_argument("--retry-failed", action="store_true", help="recompute the records that failed before")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="attribute only every N-th record from the I-th (0-based); N processes with the same "
                        "--output cover the input once")
    p.add_argument("--batch-requests", dest="batching", default="auto", choices=("auto", "on", "off"),
                   help="share model passes between similar records (auto: on CUDA only; on the CPU it "
                        "measured no faster; numbers equal to one at a time up to float rounding)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary and no model-cache notices")
    ray = p.add_argument_group("Ray (pip install 'heta-fast[ray]')")
    ray.add_argument("--ray", action="store_true", help="run the attribution on Ray Data actors")
    ray.add_argument("--ray-address", default=None, help="cluster address (auto: the running cluster; "
                                                          "default: start a local instance)")
    ray.add_argument("--concurrency", type=int, default=None, help="number of model actors (default 2)")
    ray.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per actor (default 0: CPU actors)")
    ray.add_argument("--threads-per-worker", type=int, default=None,
                     help="torch threads (and CPUs) per actor (default 1)")
    ray.add_argument("--memory-per-worker", default=None, metavar="BYTES",
                     help="memory Ray reserves per actor (e.g. 4G), so a node runs only the actors its memory "
                          "holds (default: none reserved; docs/pipeline.md)")
    ray.add_argument("--batch-size", type=int, default=None,
                     help="records per actor call (default 1: an actor attributes its records one "
                          "after another, so larger calls only unbalance the actors)")
    return p


def parse_bytes(text: str, flag: str = "--memory-budget") -> int:
    """'2G', '500M', '1024' -> bytes (binary units); a ConfigError naming ``flag`` otherwise."""
    from .errors import ConfigError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise ConfigError(f"{flag} must be a number of bytes like 2G or 500M, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _terminate(signum, frame):
    raise KeyboardInterrupt


def check_modes(args) -> None:
    """Refuse an option of a mode that was not chosen (ConfigError): the Ray options without
    --ray, --split without --dataset, --shard with --ray. Ignored, it would leave the user
    believing it applied."""
    from .errors import ConfigError

    if args.ray and args.shard is not None:
        raise ConfigError("--shard and --ray do not combine: Ray spreads the records over its actors")
    if not args.ray:
        given = ["--" + name.replace("_", "-") for name in RAY_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --ray runs only; "
                              "add --ray or leave it out")
    if args.split is not None and args.dataset is None:
        raise ConfigError("--split chooses a split of --dataset; it does not apply to --input")


def run_pipeline(args) -> int:
    from .pipeline.readers import Fields, read_dataset, read_file

    check_modes(args)
    config = config_from_args(args)
    if args.memory_budget is not None:
        config = config.replace(memory_budget=parse_bytes(args.memory_budget))
    fields = Fields(id=args.id_field, prompt=args.prompt_field,
                    target=None if args.generate else args.target_field, messages=args.messages_field)
    progress = "quiet" if args.quiet else None
    previous = signal.signal(signal.SIGTERM, _terminate)  # finish the part being written, like Ctrl-C
    try:
        if args.ray:
            return _run_ray(args, config, fields, progress)
        # Read again from the start when the run needs it, never whole (pipeline/readers.py).
        records = read_dataset(args.dataset, args.split) if args.dataset is not None else read_file(args.input)
        from .allocator import keep_freed_memory
        from .pipeline.run import PendingModel, run_to_directory

        if args.process_is_ours:  # freed blocks are reused, not faulted in again
            keep_freed_memory()
        # Loaded by the run once the ids, the fields and the output directory are checked.
        model = PendingModel(args.model, config, **load_args(args))
        run_to_directory(model, records, args.output, fields=fields, config=config, generate=args.generate,
                         shard=args.shard, fmt=args.fmt, rows_per_part=args.rows_per_part,
                         retry_failed=args.retry_failed, progress=progress, batching=args.batching)
    except KeyboardInterrupt:
        print(f"heta-fast: interrupted; the records written are kept in {args.output}: run the same command "
              "again to continue", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _run_ray(args, config, fields, progress) -> int:
    from .distributed import attribute_ray
    from .pipeline.readers import read_dataset

    given = {name: getattr(args, name) for name in RAY_OPTIONS if getattr(args, name) is not None}
    if "memory_per_worker" in given:
        given["memory_per_worker"] = parse_bytes(given["memory_per_worker"], "--memory-per-worker")
    # A data set is memory-mapped and read on the driver like a file: ids first, then a block at a time.
    source = args.input if args.input is not None else read_dataset(args.dataset, args.split)
    attribute_ray(source, args.output, model=args.model, config=config, fields=fields, generate=args.generate,
                  fmt=args.fmt, rows_per_part=args.rows_per_part, retry_failed=args.retry_failed, progress=progress,
                  batching=args.batching, **given, **load_args(args))
    return 0

