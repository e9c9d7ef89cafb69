"""Helpers: the service as a real process: ``python -m heta_fast.serve_cli --port 0`` on 127.0.0.1.

The process runs from a temporary folder (the repository's top-level ``kernels/`` folder must not
shadow the PyPI package transformers imports), prints its address once bound, and is stopped
with SIGTERM (then SIGKILL) at the end of the module or session that started it.
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

httpx = pytest.importorskip("httpx")

START_TIMEOUT = 180.0  # seconds: import torch + transformers + load the model on a busy machine
TOKEN = "s3cret-token"


class ServiceProcess:
    """``heta-fast serve`` started at once (``ready()`` waits for its address; ``stop()`` ends it), so
    that several services can load their models at the same time."""

    def __init__(self, model_dir, *args, cwd, env_extra=None):
        env = {**os.environ, **(env_extra or {})}
        cmd = [sys.executable, "-m", "heta_fast.serve_cli", "--model", str(model_dir), "--host", "127.0.0.1",
               "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self.errors: collections.deque[str] = collections.deque(maxlen=200)  # stderr's tail (drained: never full)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        threading.Thread(target=lambda: self.errors.extend(self.proc.stderr), daemon=True).start()
        self.url: str | None = None

    def ready(self) -> str:
        if self.url is None:
            url = _wait_for_address(self.proc, self.lines, self.errors)
            _wait_healthy(url)
            self.url = url
        return self.url

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


@contextmanager
def running_service(model_dir, *args, cwd, env_extra=None):
    """Yield ``(url, process)`` of a service on a free loopback port; stop it afterwards."""
    service = ServiceProcess(model_dir, *args, cwd=cwd, env_extra=env_extra)
    try:
        yield service.ready(), service.proc
    finally:
        service.stop()


def _wait_for_address(proc, lines, errors) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for line in list(lines):
            if line.startswith("heta-fast serve: http://127.0.0.1:"):
                return line.split(": ", 1)[1].strip()
        if proc.poll() is not None:
            time.sleep(0.5)  # let the reader take the last lines
            raise RuntimeError(f"the service exited with {proc.returncode}: {''.join(errors)[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError("the service did not print its address in time")


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the service never answered /healthz")


def wait_done(client, url: str, job_id: str, timeout: float = 60.0) -> dict:
    """Wait for a job to finish (bounded in time; the service answers when it finishes: ``?wait``,
    at most 10 s per call); returns its view."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        view = client.get(f"{url}v1/attributions/{job_id}", params={"wait": min(remaining, 10.0)}).json()
        if view["status"] in ("done", "failed", "cancelled"):
            return view
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
