"""Human-readable views of an :class:`~heta_fast.result.Attribution`: terminal and HTML.

Terminal text degrades to what the stream can encode (a ``cp1252`` or ASCII console): the bar
glyphs become ASCII, other characters a backslash escape; nothing raises UnicodeEncodeError.
"""
from __future__ import annotations

import html
import os
import sys
import unicodedata

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
    """A token as the heatmap line shows it: newline and tab as glyphs, every other control
    character (ESC, CR, ...) as ``\\xNN``, so that no token moves the cursor or recolours the terminal."""
    tok = tok.replace("\n", "⏎").replace("\t", "⇥")
    return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in tok)


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


def shown_units(res) -> list[tuple[int, str | None]]:
    """(context index, label) of every unit a view shows: the attributed ones (a chat's message
    contents unless its template tokens were attributed); label is the role that starts a
    message's content (``"user: "``), None elsewhere."""
    shown, previous = [], None
    for i in res.attributed_indices():
        segment = res.segments[i] if res.segments is not None else None
        label = None
        if segment is not None and segment >= 0 and segment != previous:
            label = f"{res.messages[segment]['role']}: " if res.messages else None
        previous = segment
        shown.append((i, label))
    return shown


def render_terminal(res, k: int = 5, color: bool | None = None, stream=None) -> str:
    """Heatmap of the context (one line of text) and a top-k table, per target token; of a chat,
    each message's content after its role (template tokens are not shown unless attributed).

    stream: where the text will be printed (default stdout); decides colour and what the text
    may contain (:func:`printable`).
    """
    stream = stream if stream is not None else sys.stdout
    if color is None:
        color = hasattr(stream, "isatty") and stream.isatty() and "NO_COLOR" not in os.environ
    lines, shown = [], shown_units(res)
    index = torch.tensor([i for i, _ in shown], dtype=torch.long)
    for t, target in enumerate(res.target_tokens):
        weights = _normalised(res.scores[t][index])
        # method and unit come from the caller or a loaded file: shown as visibly as any token
        lines.append(f"target {t}: {target!r}  ({_visible(str(res.method))}, {_visible(str(res.unit))})")
        cells = []
        for (i, label), w in zip(shown, weights):
            if label is not None:  # a role is the caller's text too
                cells.append(("\n" if cells else "") + _visible(label))
            tok = _visible(res.context_tokens[i])
            if color:  # 256-colour background from white (0) to deep red (max)
                code = _PALETTE[int(round(w * (len(_PALETTE) - 1)))]
                cells.append(f"\x1b[48;5;{code}m\x1b[38;5;16m{tok}\x1b[0m")
            else:  # each token followed by a bar whose height is its relative score
                cells.append(f"{tok}{_SHADES[int(round(w * 8))]}")
        lines.append("".join(cells))
        lines.append(f"  {'rank':>4}  {'index':>5}  {'score':>11}  token")
        for rank, (i, tok, score) in enumerate(res.topk(k, target=t), start=1):
            lines.append(f"  {rank:>4}  {i:>5}  {score:>11.4e}  {tok!r}")
    return printable("\n".join(lines), stream)


def render_html(res) -> str:
    """A self-contained HTML page: one heatmap per target, components in each token's tooltip
    (the units :func:`shown_units` lists: a chat's message contents, each after its role)."""
    parts = ["<!doctype html><meta charset='utf-8'><title>heta-fast attribution</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             ".ctx{line-height:2;font-family:monospace;white-space:pre-wrap}"
             ".tok{padding:2px 0;border-radius:3px}</style>",
             f"<h1>{html.escape(res.method)} attribution</h1>",
             f"<p>model: {html.escape(str(res.model))}</p>"]
    shown = shown_units(res)
    index = torch.tensor([i for i, _ in shown], dtype=torch.long)
    for t, target in enumerate(res.target_tokens):
        weights = _normalised(res.scores[t][index])
        parts.append(f"<h2>target {t}: <code>{html.escape(repr(target))}</code></h2><div class='ctx'>")
        for (i, label), w in zip(shown, weights):
            tok = res.context_tokens[i]
            if label is not None:
                parts.append(f"{'<br>' if i != shown[0][0] else ''}<b>{html.escape(label)}</b>")
            tip = [f"score={float(res.scores[t, i]):.4e}"]
            for name in COMPONENTS:
                comp = getattr(res, name)
                if comp is not None:
                    tip.append(f"{name}={float(comp[t, i]):.4e}")
            parts.append(f"<span class='tok' title='{html.escape(' '.join(tip))}' "
                         f"style='background:rgba(220,30,30,{w:.3f})'>{html.escape(tok)}</span>")
        parts.append("</div>")
    return "".join(parts)
