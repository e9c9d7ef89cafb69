"""Progress of a run over records: a tqdm bar on a terminal, plain log lines otherwise, a summary at the end."""
from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_EVERY_SECONDS = 10.0


class RunProgress:
    """Counts records done / failed / skipped and context tokens; renders them on ``stream``.

    total: records this run will compute (skipped ones excluded); mode: "bar", "log" or "quiet"
    (default: "bar" on a terminal, "log" otherwise).
    """

    def __init__(self, total: int, skipped: int = 0, mode: str | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.mode = mode or ("bar" if getattr(self.stream, "isatty", lambda: False)() else "log")
        self.total, self.skipped = total, skipped
        self.done = self.failed = self.tokens = 0
        self.start = self._last_log = time.perf_counter()
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=self.stream, unit="rec", dynamic_ncols=True, desc="attributing")
        if self.mode == "log":
            self._log(f"{total} records to attribute, {skipped} already written (skipped)")

    def update(self, ok: bool, n_context: int = 0) -> None:
        """One record finished (``ok`` False: a failure row); ``n_context``: its context tokens."""
        self.done += 1
        self.failed += 0 if ok else 1
        self.tokens += int(n_context)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"failed {self.failed}, skipped {self.skipped}, {self.token_rate:.0f} ctx tok/s",
                                      refresh=False)
        elif self.mode == "log":
            now = time.perf_counter()
            if now - self._last_log >= LOG_EVERY_SECONDS or self.done == self.total:
                self._last_log = now
                eta = (self.total - self.done) / self.record_rate if self.record_rate > 0 else float("nan")
                self._log(f"{self.done}/{self.total} records ({self.failed} failed, {self.skipped} skipped), "
                          f"{self.record_rate:.2f} records/s, {self.token_rate:.0f} context tokens/s, ETA {eta:.0f} s")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def record_rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def token_rate(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.done - self.failed} attributed, {self.failed} failed, {self.skipped} skipped in "
                f"{self.elapsed:.1f} s ({self.record_rate:.2f} records/s, {self.token_rate:.0f} context tokens/s)")

    def close(self, output: str | None = None) -> None:
        """Close the bar and print the summary (not in quiet mode)."""
        if self._bar is not None:
            self._bar.close()
        if self.mode != "quiet":
            self._log(self.summary() + (f" -> {output}" if output else ""))

    def _log(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
