"""Human-readable views of an :class:`~heta_fast.result.Attribution`: terminal and HTML.

Terminal text degrades to what the stream can encode (a ``cp1252`` or ASCII console): the bar
glyphs become ASCII, other characters a backslash escape; nothing raises UnicodeEncodeError.
"""
from __future__ import annotations

import html
import os
import sys

import torch

from .components import COMPONENTS

_SHADES = " ▁▂▃▄▅▆▇█"
_ASCII_SHADES = " .:-=+*#@"
# What the glyphs heta-fast prints become on a terminal that cannot encode them.
_FALLBACK = str.maketrans({"⏎": "\\n", "⇥": "\\t", "↑": "^", "↓": "v", "−": "-", "±": "+-", "×": "x", "…": "...",
                           **dict(zip(_SHADES, _ASCII_SHADES))})
_PALETTE = (231, 224, 217, 210, 203, 196)  # xterm-256 backgrounds, white to red


def _normalised(row: torch.Tensor) -> list[float]:
    top = float(row.max()) if row.numel() else 0.0
    if top <= 0:
        return [0.0] * row.numel()
    return [max(0.0, float(v) / top) for v in row]


def _visible(tok: str) -> str:
    return tok.replace("\n", "⏎").replace("\t", "⇥")


def encoding_of(stream) -> str:
    """The stream's text encoding (UTF-8 when it does not say or names no known codec)."""
    import codecs

    enc = getattr(stream, "encoding", None) or "utf-8"
    try:
        return codecs.lookup(enc).name
    except LookupError:
        return "utf-8"


def printable(text: str, stream=None) -> str:
    """``text`` as ``stream`` (default stdout) can encode it: known glyphs in ASCII, others escaped."""
    enc = encoding_of(stream if stream is not None else sys.stdout)
    try:
        text.encode(enc)
        return text
    except UnicodeEncodeError:
        return text.translate(_FALLBACK).encode(enc, "backslashreplace").decode(enc)


def render_terminal(res, k: int = 5, color: bool | None = None, stream=None) -> str:
    """Heatmap of the context (one line of text) and a top-k table, per target token.

    stream: where the text will be printed (default stdout); decides colour and what the text
    may contain (:func:`printable`).
    """
    stream = stream if stream is not None else sys.stdout
    if color is None:
        color = hasattr(stream, "isatty") and stream.isatty() and "NO_COLOR" not in os.environ
    lines = []
    for t, target in enumerate(res.target_tokens):
        row = res.scores[t]
        weights = _normalised(row)
        lines.append(f"target {t}: {target!r}  ({res.method}, {res.unit})")
        if color:
            # 256-colour background from white (0) to deep red (max).
            cells = []
            for tok, w in zip(res.context_tokens, weights):
                code = _PALETTE[int(round(w * (len(_PALETTE) - 1)))]
                cells.append(f"\x1b[48;5;{code}m\x1b[38;5;16m{_visible(tok)}\x1b[0m")
            lines.append("".join(cells))
        else:
            # Without colour: each token followed by a bar whose height is its relative score.
            cells = zip(res.context_tokens, weights)
            lines.append("".join(f"{_visible(tok)}{_SHADES[int(round(w * 8))]}" for tok, w in cells))
        lines.append(f"  {'rank':>4}  {'index':>5}  {'score':>11}  token")
        for rank, (i, tok, score) in enumerate(res.topk(k, target=t), start=1):
            lines.append(f"  {rank:>4}  {i:>5}  {score:>11.4e}  {tok!r}")
    return printable("\n".join(lines), stream)


def render_html(res) -> str:
    """A self-contained HTML page: one heatmap per target, components in each token's tooltip."""
    parts = ["<!doctype html><meta charset='utf-8'><title>heta-fast attribution</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             ".ctx{line-height:2;font-family:monospace;white-space:pre-wrap}"
             ".tok{padding:2px 0;border-radius:3px}</style>",
             f"<h1>{html.escape(res.method)} attribution</h1>",
             f"<p>model: {html.escape(str(res.model))}</p>"]
    for t, target in enumerate(res.target_tokens):
        weights = _normalised(res.scores[t])
        parts.append(f"<h2>target {t}: <code>{html.escape(repr(target))}</code></h2><div class='ctx'>")
        for i, (tok, w) in enumerate(zip(res.context_tokens, weights)):
            tip = [f"score={float(res.scores[t, i]):.4e}"]
            for name in COMPONENTS:
                comp = getattr(res, name)
                if comp is not None:
                    tip.append(f"{name}={float(comp[t, i]):.4e}")
            parts.append(f"<span class='tok' title='{html.escape(' '.join(tip))}' "
                         f"style='background:rgba(220,30,30,{w:.3f})'>{html.escape(tok)}</span>")
        parts.append("</div>")
    return "".join(parts)
