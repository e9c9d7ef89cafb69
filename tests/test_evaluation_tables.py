"""EVALUATION.md's tables are what its commands print from the committed per-record results.

Every ``python scripts/...`` command in EVALUATION.md that reads only files under docs/results/
(and writes nothing) is run here, in process, and every table row it prints must appear verbatim
in EVALUATION.md, except where the document shows a command's output in part (SHOWN_IN_PART, with
the reason). So a results file and the document cannot drift apart, and a change of the summary
code that moves a published number fails here until the document is rebuilt.
"""
import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "EVALUATION.md"
# Commands (a distinctive part of them) whose tables EVALUATION.md shows in part or re-laid out.
SHOWN_IN_PART = {
    "--paired heta_max": "the text quotes heta_max's paired differences instead of the table",
    "--table docs/results/robustness_decoding": "the summary tables are shown; the per-setting table is printed",
    "information_estimators.py table": "shown in a table with the rank as its first column",
    "precision_quality.py table": "shown with the stages as rows of a wider table",
    "sink_token/": "one row of the six-row table, which lists each setting",
}


def documented_commands() -> list[str]:
    """The table commands of EVALUATION.md: continuation lines joined, comments dropped, and a
    ``[--flag]`` option run both without and with the flag."""
    lines, commands, i = DOC.read_text(encoding="utf-8").splitlines(), [], 0
    while i < len(lines):
        line = lines[i].split("#")[0].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1].strip() + " " + lines[i].split("#")[0].strip()
        i += 1
        if not line.startswith("python scripts/") or "--write" in line or "--out" in line:
            continue
        files = [w for w in shlex.split(line.replace("[", "").replace("]", "")) if w.endswith(".json")]
        if not files or not all(f.startswith("docs/results/") and (ROOT / f).exists() for f in files):
            continue
        optional = re.search(r"\[(--[\w-]+)\]", line)
        if optional:
            commands += [line.replace(optional.group(0), ""), line.replace(optional.group(0), optional.group(1))]
        else:
            commands.append(line)
    return [" ".join(c.split()) for c in commands]


def table_rows(text: str) -> list[str]:
    return [r.strip() for r in text.splitlines()
            if r.strip().startswith("|") and not set(r.strip()) <= set("|-: ")]


def run_script(command: str, monkeypatch) -> str:
    """stdout of ``python scripts/X.py ARGS`` run in this process (from the repository root)."""
    words = shlex.split(command)[1:]
    script = ROOT / words[0]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [str(script), *words[1:]])
    monkeypatch.syspath_prepend(str(script.parent))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            assert exc.code in (0, None), f"{command} exited with {exc.code}"
    return out.getvalue()


COMMANDS = documented_commands()


def test_the_document_has_table_commands():
    assert len(COMMANDS) >= 15  # a parsing change that finds nothing must not pass silently


@pytest.mark.parametrize("command", COMMANDS, ids=[c.split("scripts/")[1][:70] for c in COMMANDS])
def test_every_table_row_a_command_prints_is_in_the_document(command, monkeypatch):
    rows = table_rows(run_script(command, monkeypatch))
    assert rows, f"{command} printed no table"
    if any(part in command for part in SHOWN_IN_PART):
        return  # run (it must still work on the committed files), compared in part by hand
    document = set(table_rows(DOC.read_text(encoding="utf-8")))
    missing = [r for r in rows if r not in document]
    assert not missing, f"{command}: {len(missing)} of {len(rows)} rows are not in EVALUATION.md, e.g. {missing[0]}"
