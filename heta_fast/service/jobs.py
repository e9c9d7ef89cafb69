"""The job queue, its one worker thread (the only thread that runs the model) and the results store.

A job is queued by the API, taken by the worker in groups of at most ``max_group`` and run
through the cross-request :class:`~heta_fast.scheduler.Scheduler` (``generate`` jobs one at a
time through ``generate_and_attribute``). The progress callback of each job marks it running,
records its phase, and raises :class:`JobCancelledError` / :class:`JobTimeoutError` when the job
was cancelled or ran past its time limit: the engine stops that job and goes on with the next.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import HetaError, JobCancelledError, JobTimeoutError, OutputError, QueueFullError
from ..files import atomic_write
from ..progress import ProgressEvent
from ..result import Attribution, FailedAttribution
from ..scheduler import Job as SchedulerJob
from ..scheduler import Scheduler
from .metrics import Metrics
from .settings import ServiceSettings

TERMINAL = ("done", "failed", "cancelled")
LOG = logging.getLogger(__name__)


@dataclass
class JobRecord:
    """One request's life: prompt (text or ids) or chat messages, target (text/ids) or generate
    (N), its HETAConfig."""

    id: str
    prompt: object
    target: object
    generate: int | None
    config: object
    messages: list | None = None
    status: str = "queued"
    phase: str | None = None
    progress: dict | None = None
    error: dict | None = None
    result: dict | None = None
    results_file_error: str | None = None  # a done job whose <id>.json could not be written: why
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    version: int = 0  # bumped on every change (waiting requests and the events stream watch it)
    watchers: list = field(default_factory=list, repr=False)  # called (under the lock) on every change

    def view(self) -> dict:
        keys = ("id", "status", "phase", "progress", "error", "created", "started", "finished", "result",
                "results_file_error")
        return {k: getattr(self, k) for k in keys}


class JobManager:
    """Thread-safe store of jobs plus the worker thread. ``submit`` may raise QueueFullError."""

    def __init__(self, attributor, settings: ServiceSettings, metrics: Metrics):
        self.attributor, self.settings, self.metrics = attributor, settings, metrics
        self._jobs: OrderedDict[str, JobRecord] = OrderedDict()
        self._cond = threading.Condition()
        self._stop = False
        self._durations: list[float] = []  # recent job run times, for Retry-After
        self._thread = threading.Thread(target=self._work, name="heta-worker", daemon=True)

    # ------------------------------------------------------------------ API side
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, prompt, target, generate, config, messages=None) -> JobRecord:
        with self._cond:
            self._evict()
            queued = self.queue_depth()
            if queued >= self.settings.max_queue:
                raise QueueFullError(f"the queue is full ({queued} jobs waiting); retry later", self._retry_after())
            job = JobRecord(uuid.uuid4().hex, prompt, target, generate, config, messages)
            self._jobs[job.id] = job
            self.metrics.set_queue_depth(queued + 1)
            self.metrics.count_submitted()
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> JobRecord | None:
        with self._cond:
            self._evict()
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job at once; a running one stops at its next progress step."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.status in TERMINAL:
                return job
            job.cancel_requested = True
            if job.status == "queued":
                self._finish(job, "cancelled", error={"type": "JobCancelledError", "message": "cancelled by a client"})
                self.metrics.set_queue_depth(self.queue_depth())
            return job

    def queue_depth(self) -> int:
        return sum(1 for j in self._jobs.values() if j.status == "queued")

    def snapshot(self, job: JobRecord) -> tuple[int, dict]:
        with self._cond:
            return job.version, job.view()

    def watch(self, job: JobRecord, wake) -> None:
        """Call ``wake()`` (from whichever thread changes the job; it must not block) on every change."""
        with self._cond:
            job.watchers.append(wake)

    def unwatch(self, job: JobRecord, wake) -> None:
        with self._cond:
            if wake in job.watchers:
                job.watchers.remove(wake)

    def _changed(self, job: JobRecord) -> None:
        """Under the lock: a new version of the job; wake whoever waits for it."""
        job.version += 1
        for wake in list(job.watchers):
            wake()

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not any(j.status == "queued" for j in self._jobs.values()):
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    return
                batch = [j for j in self._jobs.values() if j.status == "queued"][: self.settings.max_group]
                # A generate job runs alone; attribute jobs go to the scheduler together.
                batch = batch[:1] if batch[0].generate else [j for j in batch if not j.generate]
            try:
                if batch[0].generate:
                    self._run_generate(batch[0])
                else:
                    self._run_group(batch)
            except Exception as exc:  # a bug must not kill the worker: the jobs fail, the worker goes on
                for job in batch:
                    self._fail_unfinished(job, exc)
            with self._cond:
                self.metrics.set_queue_depth(self.queue_depth())

    def _run_group(self, batch: list[JobRecord]) -> None:
        jobs = {job.id: job for job in batch}
        # Shared passes (settings.batching): a job cancelled or timed out mid-group stops the group,
        # which the engine then redoes one job at a time, so only that job fails.
        scheduler = Scheduler(self.attributor, lookahead=len(batch), max_group=len(batch),
                              batching=self.settings.batching)
        work = [SchedulerJob(job.id, job.prompt, job.target, job.config, self._progress(job), job.messages)
                for job in batch]
        for key, result in scheduler.run(work):
            self._complete(jobs[key], result)

    def _run_generate(self, job: JobRecord) -> None:
        self._mark_running(job)
        try:
            result = self.attributor.generate_and_attribute(job.prompt, job.generate, config=job.config,
                                                            progress=self._progress(job), messages=job.messages)
        except HetaError as exc:
            result = FailedAttribution(0, job.prompt, None, type(exc).__name__, str(exc))
        self._complete(job, result)

    def _progress(self, job: JobRecord):
        def report(event: ProgressEvent) -> None:
            with self._cond:
                if job.status in TERMINAL:  # cancelled while the worker held it: its state stays final
                    raise JobCancelledError("cancelled by a client")
                self._mark_running(job)
                job.phase = event.phase
                job.progress = {"phase": event.phase, "done": event.done, "total": event.total, "unit": event.unit}
                self._changed(job)
                cancelled, started = job.cancel_requested, job.started
            if cancelled:
                raise JobCancelledError("cancelled by a client")
            limit = self.settings.job_timeout
            if time.time() - started > limit:
                raise JobTimeoutError(f"the job ran longer than the service's time limit of {limit:g} s")

        return report

    def _mark_running(self, job: JobRecord) -> None:
        with self._cond:
            if job.status == "queued":
                job.status, job.started = "running", time.time()
                self._changed(job)

    def _complete(self, job: JobRecord, result) -> None:
        if job.status in TERMINAL:  # cancelled after its last progress step: no file for it
            return
        if isinstance(result, Attribution):
            data = result.to_dict()
            # Written before the job is "done": a client that sees "done" finds the file (or why not).
            problem = self._write(job.id, data)
            with self._cond:
                job.results_file_error = problem
                self._finish(job, "done", result=data)
            for phase, seconds in result.timings.items():
                self.metrics.observe_phase(phase, seconds)
            return
        status = "cancelled" if result.error_type == JobCancelledError.__name__ else "failed"
        with self._cond:
            self._finish(job, status, error={"type": result.error_type, "message": " ".join(result.message.split())})

    def _fail_unfinished(self, job: JobRecord, exc: Exception) -> None:
        with self._cond:
            if job.status not in TERMINAL:
                self._finish(job, "failed", error={"type": "InternalError", "message": f"{type(exc).__name__}: {exc}"})

    def _finish(self, job: JobRecord, status: str, result: dict | None = None, error: dict | None = None) -> None:
        """Under the lock: a job reaches its final state exactly once."""
        if job.status in TERMINAL:
            return
        job.status, job.result, job.error, job.finished = status, result, error, time.time()
        self._changed(job)
        if job.started is not None:
            run = job.finished - job.started
            self._durations = (self._durations + [run])[-20:]
            self.metrics.observe_job(run)
        self.metrics.count_job(status, error["type"] if error else None)
        self._cond.notify_all()

    # ------------------------------------------------------------------ housekeeping
    def _evict(self) -> None:
        """Under the lock: drop finished jobs older than results_ttl, then the oldest past max_results."""
        now = time.time()
        finished = [j for j in self._jobs.values() if j.status in TERMINAL]
        expired = [j for j in finished if now - j.finished > self.settings.results_ttl]
        excess = len(finished) - len(expired) - self.settings.max_results
        kept = sorted((j for j in finished if j not in expired), key=lambda j: j.finished)
        for job in expired + kept[:max(excess, 0)]:
            del self._jobs[job.id]

    def _retry_after(self) -> int:
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, min(3600, round(mean * max(self.queue_depth(), 1) / max(self.settings.max_group, 1))))

    def _write(self, job_id: str, data: dict) -> str | None:
        """Write a result to ``<results_dir>/<id>.json`` (``files.atomic_write``: never half a file).

        Returns None, or one line saying why the file could not be written (logged too). Never
        raises for it: the failure concerns this job's file only, not the result itself nor the
        other jobs of its group."""
        folder = self.settings.results_dir
        if folder is None:
            return None
        path = os.path.join(folder, f"{job_id}.json")
        try:
            atomic_write(path, json.dumps(data))
        except OutputError as exc:
            problem = f"the results file {path} could not be written ({exc})"
            LOG.error("heta-fast serve: %s", problem)
            return problem
        return None
