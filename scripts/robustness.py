"""Robustness of the attributions on the curated set (issue 17 §6): paraphrase, embedding noise, decoding.

    python scripts/robustness.py --study paraphrase --methods heta,saliency,input_x_gradient,rollout \\
        --out docs/results/robustness_paraphrase.json [--limit N] [--threads 1]
    python scripts/robustness.py --study noise --limit 20 --scales 0.01,0.1,0.5 \\
        --out docs/results/robustness_noise.json
    python scripts/robustness.py --study decoding --limit 10 --threads 1 \
        --out docs/results/robustness_decoding.json [--grid "temperature=0.7;top_p=0.9" --seeds 0,1,2]
    python scripts/robustness.py --table docs/results/robustness_paraphrase.json   # markdown table

Default model (float32, CPU, default HETA configuration). Records: the curated set
(``../shared/data/curated_qa_100.json``) in file order; ``--study paraphrase`` takes the records
``data/paraphrase_curated.json`` rewrites (its source ids), ``--limit N`` the first N of them.
Per record and method (heta_fast/evaluate/robustness/): paraphrase, the Spearman of the content
words' score magnitudes, original against rewritten support segment; noise, 1 − Spearman and the
total-variation change of the normalised |scores| at each scale (noise std = scale × the row's RMS,
seeded by ``--seed`` and the record id). The file is rewritten after every record and a rerun skips
the (record, method) pairs it holds, so more ``--methods`` or a larger ``--limit`` extend it.
``--prompt-format chat`` asks each record's question as the user message of the model's chat template
(``heta_fast.evaluate.data.chat_example``, as ``heta-fast eval --prompt-format chat``), so that the
decoding study attributes the model's own answers. ``--start A`` skips the first A of them, so that
``--start 0 --limit 10`` and ``--start 10 --limit 20`` split a run over two processes (two files;
``--table`` pools them, ``--merge A B --out C`` writes them as one). ``--table`` prints mean [95%
bootstrap interval], median and the worst tenth's edge (10th percentile of the Spearman, 90th of
the change) per method (and scale).

Decoding (heta_fast/evaluate/robustness/decoding.py ``decoding_sensitivity``, sampler in
heta_fast/evaluate/sampling.py): per record, the greedy answer's first token (the reference) and,
for every ``--grid`` setting (``;``-separated, each ``name=value[,name=value]`` around the base
temperature 1, top-p 1, top-k off, repetition penalty 1) × ``--seeds``, the first token of a
sampled answer, each attributed with every method and scored with the six evaluation metrics
(the evaluation's settings: 10 Soft-NS/NC samples, seed 0, top 10/20/30%, ``--measure log_prob``
as in EVALUATION.md's main table); a (record, token, method) is computed once. ``--table`` prints, per
method and metric, the greedy mean, the largest relative change |mean − mean_greedy| / |mean_greedy|
over the grid with its 95% bootstrap interval, the largest per setting, the paired difference to
heta, and how often each setting's first token differs from the greedy one.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from measure_cli import DATA, p10, save_json
from variant_table import paired

PARAPHRASES = Path(__file__).resolve().parents[1] / "data" / "paraphrase_curated.json"
DEFAULT_METHODS = "heta,saliency,input_x_gradient,rollout,occlusion"


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from heta_fast import Attributor
    from heta_fast.evaluate.data import load_curated
    from heta_fast.evaluate.methods import resolve_methods
    from heta_fast.evaluate.robustness import (
        TokenCache,
        decoding_sensitivity,
        load_paraphrases,
        noise_sensitivity,
        paraphrase_agreement,
    )
    from heta_fast.evaluate.runner import EvalSettings

    methods = resolve_methods(args.methods)
    scales = [float(s) for s in args.scales.split(",")]
    attributor = Attributor.from_pretrained(args.model, device="cpu")
    rewrites = {i: p for p in load_paraphrases(args.paraphrases) for i in p.source_ids}
    examples = study_examples(load_curated(args.data), args.study, rewrites, attributor.tokenizer,
                              args.prompt_format, args.start, args.limit)
    header = {"study": args.study, "model": args.model, "heta_config": attributor.config.to_dict(),
              "data": Path(args.data).name, "threads": args.threads, "prompt": args.prompt_format}
    settings = EvalSettings(measure=args.measure)  # the evaluation's (EVALUATION.md: log_prob)
    if args.study == "paraphrase":
        header["paraphrases"] = "data/paraphrase_curated.json"
    elif args.study == "noise":
        header.update({"scales": scales, "seed": args.seed, "noise": "std = scale x RMS of each embedding row"})
    else:
        header.update({"grid": _grid(args.grid), "seeds": _seeds(args.seeds), "max_new_tokens": args.max_new_tokens,
                       "metric_settings": settings.to_dict(),
                       "sampler": "heta_fast/evaluate/sampling.py (seed * 1000003 + crc32(record id))"})
    header = json.loads(json.dumps(header))  # as a rerun reads it back (tuples become lists)
    out = Path(args.out)
    doc = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {"header": header, "records": {}}
    if _today(doc["header"]) != header:
        sys.exit(f"{out} was written with other settings: {doc['header']}")
    if args.study == "decoding":
        return _run_decoding(attributor, examples, methods, settings, doc, out, args, TokenCache,
                             decoding_sensitivity)
    for ex in examples:
        done = doc["records"].setdefault(ex.id, {})
        pending = [m for m in methods if m not in done]
        if not pending:
            continue
        if args.study == "paraphrase":
            done.update(paraphrase_agreement(attributor, ex, rewrites[ex.id], pending))
        else:
            done.update(noise_sensitivity(attributor, ex, pending, scales, args.seed))
        save_json(out, doc)
        print(ex.id, {m: _brief(done[m]) for m in pending}, flush=True)


def _today(header: dict) -> dict:
    """A results file's header in today's fields: HETAConfig fields it does not name (added
    since) count as their defaults (``HETAConfig.completed``), files without a prompt format were plain."""
    from heta_fast import HETAConfig

    header = {"prompt": "plain", **header}
    if isinstance(header.get("heta_config"), dict):
        header["heta_config"] = HETAConfig.completed(header["heta_config"])
    return header


def study_examples(examples, study: str, rewrites: dict, tokenizer, prompt_format: str = "plain",
                   start: int = 0, limit: int | None = None) -> list:
    """The records a study runs: the paraphrase study's are those ``rewrites`` (id -> Paraphrase) rewrite;
    then ``[start:limit]`` of them; with ``prompt_format="chat"`` each asked as the user message of the
    model's chat template (its spans moved with it, so the paraphrase's support still matches)."""
    from heta_fast.evaluate.data import chat_example

    if study == "paraphrase":
        examples = [ex for ex in examples if ex.id in rewrites]
    examples = examples[start: limit]
    if prompt_format == "chat":
        examples = [chat_example(ex, tokenizer) for ex in examples]
    return examples


def _grid(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(";") if s.strip()]


def _seeds(spec: str) -> list[int]:
    return [int(s) for s in spec.split(",") if s.strip()]


def _run_decoding(attributor, examples, methods, settings, doc, out, args, token_cache, sensitivity) -> None:
    """Every record not yet done (its draws held and every method of every drawn token), then the file."""
    grid, seeds = doc["header"]["grid"], doc["header"]["seeds"]
    for ex in examples:
        rec = doc["records"].get(ex.id)
        if rec is not None and all(m in t["methods"] for t in rec["tokens"].values() for m in methods):
            continue
        cache = token_cache({ex.id: rec["tokens"]} if rec is not None else {})
        result = sensitivity(attributor, ex, methods, grid, seeds, settings, args.max_new_tokens, cache)
        result["tokens"] = cache.entries[ex.id]
        result.pop("computed")
        doc["records"][ex.id] = result
        save_json(out, doc)
        changed = {s: sum(d["token"] != result["greedy"]["token"] for d in draws.values())
                   for s, draws in result["draws"].items()}
        print(ex.id, f"greedy {result['greedy']['text'][:30]!r}", f"distinct first tokens {result['distinct_tokens']}",
              f"changed {changed}", f"computed {cache.computed}", flush=True)


def _brief(row: dict):
    if "spearman" in row:
        return None if row["spearman"] is None else round(row["spearman"], 3)
    return {k: v["rank_change"] and round(v["rank_change"], 3) for k, v in row.items() if k != "seconds"}


def _stats(values: list[float], worst_high: bool = False) -> str:
    """mean [95% CI] | median | the worst tenth's edge: the 10th percentile, or the 90th when high is worse."""
    mean, lo, hi = paired(values)
    edge = -p10([-v for v in values]) if worst_high else p10(values)
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}] | {statistics.median(values):.3f} | {edge:.3f}"


def _versus_heta(records: list[dict], method: str, value) -> str:
    """Paired mean difference (method − heta) of ``value(cell)`` over the records holding both, with its 95% CI."""
    pairs = [(value(r[method]), value(r["heta"])) for r in records if method in r and "heta" in r]
    diffs = [a - b for a, b in pairs if a is not None and b is not None]
    if method == "heta" or not diffs:
        return "—"
    d, lo, hi = paired(diffs)
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def pooled(paths: list[str]) -> dict:
    """Results files of one study written with the same settings -> one document, records by id (sorted).

    Paraphrase and noise records are {method: cell}: files holding other methods of one record (a
    method run later, in another process) pool into one record; a (record, method) held twice must
    be the same cell. A decoding record held by two files pools the same way, per drawn token, when
    both files drew the same answers (the sampler is seeded per record); otherwise it stops."""
    docs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    if any(_today(d["header"]) != _today(docs[0]["header"]) for d in docs):
        sys.exit("the results files were written with different settings")
    decoding = docs[0]["header"]["study"] == "decoding"
    records: dict = {}
    for d in docs:
        for k, v in d["records"].items():
            if decoding:
                records[k] = _pool_decoding(k, records.get(k), v)
                continue
            cells = records.setdefault(k, {})
            _check_clash(k, cells, v)
            cells.update(v)
    return {"header": docs[0]["header"], "records": dict(sorted(records.items()))}


def _check_clash(key: str, cells: dict, other: dict) -> None:
    clash = [m for m in other if m in cells and cells[m] != other[m]]
    if clash:
        sys.exit(f"record {key}: the files hold different results for {', '.join(clash)}")


def _pool_decoding(key: str, held: dict | None, other: dict) -> dict:
    """One decoding record from two files: the same draws, each drawn token's methods pooled."""
    if held is None:
        return other
    if (held["greedy"], held["draws"]) != (other["greedy"], other["draws"]):
        sys.exit(f"decoding record {key}: the files drew different answers")
    for token, entry in other["tokens"].items():
        mine = held["tokens"].setdefault(token, {**entry, "methods": {}})
        _check_clash(f"{key} token {token}", mine["methods"], entry["methods"])
        mine["methods"].update(entry["methods"])
    return held


def table(paths: list[str]) -> None:
    """Print the markdown table of results files of one study (written with the same settings), records pooled."""
    doc = pooled(paths)
    if doc["header"]["study"] == "decoding":
        return decoding_table(doc)
    records = list(doc["records"].values())
    methods = list(dict.fromkeys(m for rec in records for m in rec))
    if doc["header"]["study"] == "paraphrase":
        print("| method | records | Spearman of content words, original vs rewrite: mean [95% CI] | median | "
              "10th percentile | method − heta (paired) | s / attribution |")
        print("|---|---|---|---|---|---|---|")
        for m in methods:
            rows = [rec[m] for rec in records if m in rec]
            rho = [r["spearman"] for r in rows if r["spearman"] is not None]
            secs = statistics.median(s for r in rows for s in r["seconds"])
            versus = _versus_heta(records, m, lambda cell: cell["spearman"])
            print(f"| {m} | {len(rho)} | {_stats(rho)} | {versus} | {secs:.2f} |")
        return
    print("| method | noise scale | records | 1 − Spearman: mean [95% CI] | median | 90th percentile | "
          "method − heta (paired) | mass change (TV): mean | median |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in methods:
        for scale in doc["header"]["scales"]:
            cells = [rec[m][str(scale)] for rec in records if m in rec]
            change = [c["rank_change"] for c in cells if c["rank_change"] is not None]
            tv = [c["mass_change"] for c in cells if c["mass_change"] is not None]
            versus = _versus_heta(records, m, lambda cell, key=str(scale): cell[key]["rank_change"])
            print(f"| {m} | {scale} | {len(change)} | {_stats(change, worst_high=True)} | {versus} | "
                  f"{statistics.mean(tv):.3f} | {statistics.median(tv):.3f} |")


def _fmt_share(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _fmt(x: float) -> str:
    return "n/a" if x != x or x in (float("inf"), float("-inf")) else f"{100 * x:.1f}%"


def _metric_table(summary: dict, methods: list[str], cell) -> None:
    """A method × metric markdown table of ``cell(row)`` over the decoding summary's rows ("—" where none)."""
    from heta_fast.evaluate.runner import METRICS

    print()
    print("| method | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for m in methods:
        rows = [summary["metrics"].get((m, metric)) for metric in METRICS]
        print(f"| {m} | " + " | ".join("—" if row is None else cell(row) for row in rows) + " |")
    print()


def _absolute_cell(row: dict) -> str:
    out = f"{row['max_abs']:.4f} [{row['abs_ci'][0]:.4f}, {row['abs_ci'][1]:.4f}]"
    versus = row.get("versus_heta")
    if versus is not None:
        out += f"; {versus['abs_diff']:+.4f} [{versus['abs_ci'][0]:+.4f}, {versus['abs_ci'][1]:+.4f}]"
    return out


def decoding_table(doc: dict) -> None:
    """The decoding study's tables (heta_fast.evaluate.robustness.decoding_summary) in markdown."""
    from heta_fast.evaluate.robustness import decoding_summary
    from heta_fast.evaluate.runner import METRICS

    records, header = doc["records"], doc["header"]
    grid, seeds = header["grid"], header["seeds"]
    methods = list(dict.fromkeys(m for rec in records.values() for t in rec["tokens"].values() for m in t["methods"]))
    methods = sorted(methods, key=lambda m: m != "heta")
    summary = decoding_summary(records, methods, METRICS, grid, seeds)
    print(f"{header.get('model', 'smollm2-135m')}, {header.get('prompt', 'plain')} prompts, {len(records)} records; "
          f"seeds {', '.join(map(str, seeds))}; relative change = |mean − mean_greedy| / "
          "|mean_greedy|, mean over records; max over every (setting, seed)")
    print()
    print("Largest relative change over the grid, per method and metric [95% bootstrap CI over records]:")
    _metric_table(summary, methods, lambda row: f"{_fmt(row['max'])} [{_fmt(row['ci'][0])}, {_fmt(row['ci'][1])}]")
    print("Largest absolute change |mean − mean_greedy| over the grid, in the metric's units [95% bootstrap CI]; "
          "paired: the method's minus heta's:")
    _metric_table(summary, methods, _absolute_cell)
    print("In detail (the paired column: the method's largest relative change minus heta's, percentage points):")
    print()
    print("| method | metric | records | greedy mean | max relative change [95% CI] | at | "
          + " | ".join(f"{s} (max over seeds)" for s in grid) + " | method − heta (paired) |")
    print("|---|---|---|---|---|---|" + "---|" * len(grid) + "---|")
    for m in methods:
        for metric in METRICS:
            row = summary["metrics"].get((m, metric))
            if row is None:
                continue
            lo, hi = row["ci"]
            per = [max(c["relative"] for c in row["cells"][s].values()) for s in grid]
            versus = row.get("versus_heta")
            if versus is None:
                vs = "—"
            elif not all(math.isfinite(x) for x in (versus["diff"], *versus["ci"])):
                vs = "n/a"
            else:
                vs = f"{100 * versus['diff']:+.1f} [{100 * versus['ci'][0]:+.1f}, {100 * versus['ci'][1]:+.1f}] pt"
            at = "—" if row["argmax"] is None or row["max"] < 1e-12 else f"{row['argmax'][0]} s{row['argmax'][1]}"
            print(f"| {m} | {metric} | {row['records']} | {row['greedy']:.4f} | {_fmt(row['max'])} "
                  f"[{_fmt(lo)}, {_fmt(hi)}] | {at} | "
                  + " | ".join(_fmt(x) for x in per) + f" | {vs} |")
    print()
    print("| setting | first token differs from greedy ((record, seed) share) | distinct first tokens per record "
          "| answer contains the gold answer ((record, seed) share) |")
    print("|---|---|---|---|")
    print(f"| greedy | — | 1.00 | {_fmt_share(summary['greedy_contains_gold'])} |")
    for s in grid:
        t = summary["tokens"][s]
        print(f"| {s} | {t['changed']:.2f} | {t['distinct']:.2f} | {_fmt_share(t['contains_gold'])} |")
    distinct = [rec["distinct_tokens"] for rec in records.values()]
    print()
    print(f"distinct first tokens over the whole grid per record: mean {statistics.mean(distinct):.2f}, "
          f"max {max(distinct)}; (record, token, method) attributions computed: "
          f"{sum(len(t['methods']) for rec in records.values() for t in rec['tokens'].values())} for "
          f"{len(records) * (1 + len(grid) * len(seeds)) * len(methods)} (record, draw, method) cells")


def main(argv=None) -> None:
    from heta_fast.evaluate.robustness import DECODING_GRID

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=("paraphrase", "noise", "decoding"))
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--limit", type=int, default=None, help="records before this index (of those studied)")
    parser.add_argument("--start", type=int, default=0, help="first record (to split a run over processes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="results file (JSON) to write or continue")
    parser.add_argument("--table", metavar="FILE", nargs="+",
                        help="print the markdown table of results files (of one study, their records pooled) and stop")
    parser.add_argument("--merge", metavar="FILE", nargs="+", help="pool these results files into --out and stop")
    parser.add_argument("--scales", default="0.01,0.1,0.5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=";".join(DECODING_GRID),
                        help="decoding settings, ';'-separated, each name=value[,name=value] around the base "
                             "(temperature 1, top_p 1, top_k off, repetition_penalty 1)")
    parser.add_argument("--seeds", default="0,1,2", help="sampling seeds of every decoding setting")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="length limit of every decoded answer")
    parser.add_argument("--measure", default="log_prob", choices=("prob", "log_prob", "kl"),
                        help="decoding study: the hard comprehensiveness / sufficiency measure (as heta-fast eval)")
    parser.add_argument("--prompt-format", default="plain", choices=("plain", "chat"),
                        help="plain: the record's prompt as text (ending in the answer cue); chat: its question as "
                             "the user message of the model's chat template (as heta-fast eval --prompt-format)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--paraphrases", default=str(PARAPHRASES))
    args = parser.parse_args(argv)
    if args.table:
        table(args.table)
    elif args.merge and args.out:
        save_json(Path(args.out), pooled(args.merge))
    elif args.study and args.out:
        run(args)
    else:
        parser.error("give --study and --out (to run), or --table FILE")


if __name__ == "__main__":
    main()
