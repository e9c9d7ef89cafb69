"""Summaries of a results file: mean and 95% bootstrap interval per method × metric, as a table."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .methods import METHODS
from .runner import METRICS

LABELS = {"soft_nc": "Soft-NC ↑", "soft_ns": "Soft-NS ↑", "comprehensiveness": "Comp ↑",
          "sufficiency": "Suff ↓", "dsa": "DSA ↑", "f1": "F1 ↑"}


def bootstrap_ci(values, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap interval at ``level``.

    Each of ``resamples`` resamples draws len(values) values with replacement (numpy
    generator seeded with ``seed``); the interval is the (1−level)/2 and (1+level)/2 quantiles of
    the resampled means. NaN for no values; (v, v, v) for one.
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


@dataclass
class MethodSummary:
    method: str
    n: int                  # examples scored
    failed: int             # examples that could not be attributed
    metrics: dict           # metric -> (mean, low, high)
    first_mass: tuple       # mean share of |score| mass on position 0, with its interval
    seconds: float          # mean wall time of the attribution per example


def summarise(records: list[dict], exclude_first: bool = False) -> list[MethodSummary]:
    """One summary per method (in the canonical method order). exclude_first: DSA and F1 with
    position 0 dropped from normalisation (see :func:`heta_fast.evaluate.runner.alignment`)."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    order = [m for m in METHODS if m in by_method] + sorted(m for m in by_method if m not in METHODS)
    out = []
    for m in order:
        ok = [r for r in by_method[m] if r.get("ok")]
        metrics = {}
        for key in METRICS:
            source = "first_excluded" if exclude_first and key in ("dsa", "f1") else "metrics"
            metrics[key] = bootstrap_ci([r.get(source, {}).get(key) for r in ok])
        first = bootstrap_ci([r["diagnostics"].get("first_mass") for r in ok])
        secs = float(np.mean([r["seconds"] for r in ok])) if ok else math.nan
        out.append(MethodSummary(m, len(ok), len(by_method[m]) - len(ok), metrics, first, secs))
    return out


def correct_records(records: list[dict]) -> list[dict] | None:
    """The records of the examples the model answered correctly (its greedy answer contains the
    gold answer, ``record["answer"]["contains_gold"]``); None when no record holds an answer
    (files written before answers were recorded)."""
    if not any(isinstance(r.get("answer"), dict) for r in records):
        return None
    return [r for r in records if (r.get("answer") or {}).get("contains_gold") is True]


def failed_examples(records: list[dict]) -> dict[str, str]:
    """Example id -> the error of its first failed record, for examples with any failed record
    (a failure before any method ran, such as ``--target answer_word`` on an answer without the
    gold answer, fails every method of the example with one message)."""
    out: dict[str, str] = {}
    for r in records:
        if not r.get("ok", True):
            out.setdefault(r["example"], str(r.get("error", "")))
    return out


def paired_difference(records: list[dict], a: str, b: str, metric: str,
                      exclude_first: bool = False) -> tuple[float, float, float, int]:
    """Mean of (method a − method b) on ``metric`` over the examples both scored, with its 95%
    bootstrap interval (examples resampled as pairs), and the number of pairs."""
    source = "first_excluded" if exclude_first and metric in ("dsa", "f1") else "metrics"
    values: dict[str, dict[str, float]] = {a: {}, b: {}}
    for r in records:
        v = r.get(source, {}).get(metric) if r.get("ok") else None
        if r["method"] in values and v is not None:
            values[r["method"]][r["example"]] = v
    common = sorted(set(values[a]) & set(values[b]))
    mean, lo, hi = bootstrap_ci([values[a][e] - values[b][e] for e in common])
    return mean, lo, hi, len(common)


def _cell(stat: tuple) -> str:
    mean, lo, hi = stat
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def render_paired(records: list[dict], method: str, exclude_first: bool = False, markdown: bool = False) -> str:
    """``method`` − every other method, per metric: mean paired difference over the examples both
    scored, with its 95% bootstrap interval (a win or loss when the interval excludes 0; note
    that lower is better for sufficiency). Metrics nobody has a value for are left out."""
    others = [m for m in dict.fromkeys(r["method"] for r in records) if m != method]
    others = [m for m in METHODS if m in others] + sorted(m for m in others if m not in METHODS)
    diffs = {(m, k): paired_difference(records, method, m, k, exclude_first) for m in others for k in METRICS}
    shown = [k for k in METRICS if any(not math.isnan(diffs[m, k][0]) for m in others)]
    header = [f"{method} − method"] + [LABELS[k] for k in shown]
    rows = [[m] + [_signed(diffs[m, k]) for k in shown] for m in others]
    return _layout(header, rows, markdown)


def _signed(stat: tuple) -> str:
    mean, lo, hi, _ = stat
    if math.isnan(mean):
        return "–"
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def render_table(summaries: list[MethodSummary], markdown: bool = False) -> str:
    """Method × metric table: mean [95% bootstrap CI], first-token mass, seconds per example.

    Metrics no method has a value for (not computed, or no segments / gold words) are left out.
    """
    shown = [k for k in METRICS if any(not math.isnan(s.metrics[k][0]) for s in summaries)]
    header = ["method", "n"] + [LABELS[k] for k in shown] + ["first-token mass", "s / example"]
    rows = []
    for s in summaries:
        n = f"{s.n}" + (f" ({s.failed} failed)" if s.failed else "")
        rows.append([s.method, n] + [_cell(s.metrics[k]) for k in shown]
                    + [_cell(s.first_mass), "–" if math.isnan(s.seconds) else f"{s.seconds:.2f}"])
    return _layout(header, rows, markdown)


def _layout(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])
