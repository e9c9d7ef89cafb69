"""Helpers: the service as a real process: ``python -m heta_fast.serve_cli --port 0`` on 127.0.0.1.

The process runs from a temporary folder (the repository's top-level ``kernels/`` folder must not
shadow the PyPI package transformers imports), prints its address once bound, and is stopped
with SIGTERM (then SIGKILL) at the end of the module or session that started it.
"""
from __future__ import annotations

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


@contextmanager
def running_service(model_dir, *args, cwd, env_extra=None):
    """Yield ``(url, process)`` of a service on a free loopback port; stop it afterwards."""
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "heta_fast.serve_cli", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", "0", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        url = _wait_for_address(proc, lines)
        _wait_healthy(url)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _wait_for_address(proc, lines) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for line in list(lines):
            if line.startswith("heta-fast serve: http://127.0.0.1:"):
                return line.split(": ", 1)[1].strip()
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
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
    """Poll a job until it is finished (bounded in time); returns its view."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"{url}v1/attributions/{job_id}").json()
        if view["status"] in ("done", "failed", "cancelled"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
