"""Prometheus text exposition of the service's counters, gauge and histograms (no client library)."""
from __future__ import annotations

import bisect
import threading

# Upper bounds (seconds) of the latency histograms' buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Histogram:
    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)  # last: +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        sep = "," if labels else ""
        for bound, count in zip([*map(repr, BUCKETS), "+Inf"], self.counts):
            cumulative += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.total!r}", f"{name}_count{braces} {cumulative}"]
        return out


class Metrics:
    """Requests by method/route/status, queue depth, jobs by final status, failures by error type,
    request latency, job run time and per-phase latency histograms."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.jobs: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.queue_depth = 0
        self.submitted = 0
        self.request_latency = _Histogram()
        self.job_latency = _Histogram()
        self.phases: dict[str, _Histogram] = {}

    def count_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.request_latency.observe(seconds)

    def count_job(self, status: str, error_type: str | None) -> None:
        with self._lock:
            self.jobs[status] = self.jobs.get(status, 0) + 1
            if status == "failed" and error_type:
                self.failures[error_type] = self.failures.get(error_type, 0) + 1

    def count_submitted(self) -> None:
        with self._lock:
            self.submitted += 1

    def set_queue_depth(self, depth: int) -> None:
        with self._lock:
            self.queue_depth = depth

    def observe_job(self, seconds: float) -> None:
        with self._lock:
            self.job_latency.observe(seconds)

    def observe_phase(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.phases.setdefault(phase, _Histogram()).observe(seconds)

    def render(self) -> str:
        """The exposition text (format 0.0.4)."""
        with self._lock:
            lines = ["# HELP heta_requests_total HTTP requests by method, route and status.",
                     "# TYPE heta_requests_total counter"]
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'heta_requests_total{{method="{method}",route="{_esc(route)}",status="{status}"}} {n}')
            lines += ["# HELP heta_queue_depth Jobs waiting for the worker.", "# TYPE heta_queue_depth gauge",
                      f"heta_queue_depth {self.queue_depth}",
                      "# HELP heta_jobs_submitted_total Jobs accepted into the queue.",
                      "# TYPE heta_jobs_submitted_total counter", f"heta_jobs_submitted_total {self.submitted}",
                      "# HELP heta_jobs_total Jobs by final status.", "# TYPE heta_jobs_total counter"]
            lines += [f'heta_jobs_total{{status="{s}"}} {n}' for s, n in sorted(self.jobs.items())]
            lines += ["# HELP heta_job_failures_total Failed jobs by error type.",
                      "# TYPE heta_job_failures_total counter"]
            lines += [f'heta_job_failures_total{{type="{_esc(t)}"}} {n}' for t, n in sorted(self.failures.items())]
            lines += ["# HELP heta_request_seconds HTTP request latency.", "# TYPE heta_request_seconds histogram"]
            lines += self.request_latency.lines("heta_request_seconds", "")
            lines += ["# HELP heta_job_seconds Job run time (first step to end).", "# TYPE heta_job_seconds histogram"]
            lines += self.job_latency.lines("heta_job_seconds", "")
            lines += ["# HELP heta_phase_seconds Attribution phase latency.", "# TYPE heta_phase_seconds histogram"]
            for phase, hist in sorted(self.phases.items()):
                lines += hist.lines("heta_phase_seconds", f'phase="{_esc(phase)}"')
            return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
