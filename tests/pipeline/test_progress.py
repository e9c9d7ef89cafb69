"""RunProgress: a bar on a terminal, log lines otherwise, nothing with -q; the summary's counts."""
import io

from heta_fast.pipeline.progress import RunProgress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_when_not_a_terminal_and_a_summary():
    stream = io.StringIO()
    progress = RunProgress(3, skipped=2, stream=stream)
    assert progress.mode == "log"
    for ok in (True, False, True):
        progress.update(ok, n_context=10)
    progress.close("out/")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "3 records to attribute, 2 already written (skipped)"
    assert lines[1].startswith("3/3 records (1 failed, 2 skipped)") and "ETA" in lines[1]
    assert lines[-1].startswith("2 attributed, 1 failed, 2 skipped in") and lines[-1].endswith("-> out/")
    assert progress.tokens == 30


def test_bar_on_a_terminal_and_silence_when_quiet():
    stream = Terminal()
    progress = RunProgress(2, stream=stream)
    assert progress.mode == "bar"
    progress.update(True, 5)
    progress.update(False)
    progress.close()
    text = stream.getvalue()
    assert "2/2" in text and "failed 1" in text and "1 attributed, 1 failed, 0 skipped" in text
    quiet = io.StringIO()
    silent = RunProgress(1, mode="quiet", stream=quiet)
    silent.update(True, 1)
    silent.close()
    assert quiet.getvalue() == ""
