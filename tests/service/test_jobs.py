"""The worker's results folder (``--results-dir``): a job's file is written before the job is done, and
a file that cannot be written concerns that job only (in-process: the JobManager on the tiny model)."""
from __future__ import annotations

import logging
import shutil
import time

import pytest

from heta_fast import HETAConfig
from heta_fast.service.jobs import TERMINAL, JobManager
from heta_fast.service.metrics import Metrics
from heta_fast.service.settings import ServiceSettings

QUICK = HETAConfig(components=["flow"])
PROMPTS = ["w1 w2 w3", "w4 w5 w6", "w7 w8 w9"]


@pytest.fixture(scope="module")
def attributor(tiny_model_dir):
    from heta_fast import Attributor

    return Attributor.from_pretrained(str(tiny_model_dir))


def _run_until_finished(manager, jobs) -> None:
    """Start the worker, wait until every one of ``jobs`` is finished (two minutes at most), stop it."""
    manager.start()
    try:
        deadline = time.monotonic() + 120
        while not all(job.status in TERMINAL for job in jobs):
            assert time.monotonic() < deadline, [job.status for job in jobs]
            time.sleep(0.02)
    finally:
        manager.stop()


def _run_group(attributor, folder, watch=None) -> list:
    """The jobs of PROMPTS queued before the worker starts (so they run as one group), each with
    ``watch(job)`` called on every change of it; returns them once all are finished."""
    manager = JobManager(attributor, ServiceSettings(results_dir=str(folder), max_group=8), Metrics())
    jobs = [manager.submit(prompt, " w10", None, QUICK) for prompt in PROMPTS]
    for job in jobs:
        if watch is not None:
            manager.watch(job, lambda job=job: watch(job))
    _run_until_finished(manager, jobs)
    return jobs


def test_a_results_file_that_cannot_be_written_fails_no_job(attributor, tmp_path, caplog):
    folder = tmp_path / "results"
    folder.mkdir()
    shutil.rmtree(folder)  # removed while the service runs: no job's file can be written
    with caplog.at_level(logging.ERROR, logger="heta_fast.service.jobs"):
        jobs = _run_group(attributor, folder)
    for job in jobs:
        assert job.status == "done" and job.error is None, job.error
        assert job.result["context_tokens"] and job.result["scores"]
        # The job's own file, and the OS's reason, on the job and in one log line.
        assert job.results_file_error.startswith(f"the results file {folder / job.id}.json could not be written")
        assert "No such file or directory" in job.results_file_error
        assert job.view()["results_file_error"] == job.results_file_error
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(jobs) and all("\n" not in line for line in lines), lines
    assert sorted(lines) == sorted(f"heta-fast serve: {job.results_file_error}" for job in jobs)


def test_the_results_file_exists_when_the_job_is_done(attributor, tmp_path):
    seen = {}

    def watch(job) -> None:  # called as the job changes, before anyone can read the new state
        if job.status == "done" and job.id not in seen:
            seen[job.id] = (tmp_path / f"{job.id}.json").is_file()

    jobs = _run_group(attributor, tmp_path, watch)
    assert all(job.status == "done" and job.results_file_error is None for job in jobs)
    assert seen == {job.id: True for job in jobs}
    assert not list(tmp_path.glob("*.tmp"))


def test_a_job_cancelled_while_the_worker_holds_it_stays_as_it_was_cancelled(attributor, tmp_path):
    """The worker takes a group's jobs while they are still queued; one cancelled then is finished
    at once, and the worker's later progress steps and completion leave it as it was: no phase, no
    progress, no new version, no results file."""
    cancelled = {}

    def watch(job, others) -> None:
        if job.status == "running" and not cancelled:  # the first job runs; the others wait in its group
            victim = others[1]
            cancelled[victim.id] = victim.version + 1
            manager.cancel(victim.id)

    manager = JobManager(attributor, ServiceSettings(results_dir=str(tmp_path), max_group=8), Metrics())
    jobs = [manager.submit(prompt, " w10", None, QUICK) for prompt in PROMPTS]
    manager.watch(jobs[0], lambda: watch(jobs[0], jobs))
    _run_until_finished(manager, jobs)
    victim = jobs[1]
    assert [job.status for job in jobs] == ["done", "cancelled", "done"]
    assert (victim.phase, victim.progress, victim.started, victim.version) == (None, None, None,
                                                                               cancelled[victim.id])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{job.id}.json" for job in (jobs[0], jobs[2]))
