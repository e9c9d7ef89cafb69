"""Fixtures of the service tests: two session-wide services on the tiny model (each a real
process started once for the whole run): an open one with the default limits, and one with a
token and tight limits."""
from __future__ import annotations

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.service.helpers import TOKEN, running_service  # noqa: E402


@pytest.fixture(scope="session")
def service_url(tiny_model_dir, tmp_path_factory):
    """The tiny model served with the default limits (a 60 s job time limit)."""
    with running_service(tiny_model_dir, "--job-timeout", "60", cwd=tmp_path_factory.mktemp("serve")) as (url, _):
        yield url


@pytest.fixture(scope="session")
def limited_service(tiny_model_dir, tmp_path_factory):
    """``(url, results folder)`` of the tiny model served with a token (from the environment), a
    queue of 2, a 4 s job time limit, 3 kept results, one job at a time and a results folder."""
    results = tmp_path_factory.mktemp("results")
    args = ["--max-queue", "2", "--job-timeout", "4", "--max-results", "3", "--max-group", "1",
            "--results-dir", str(results)]
    with running_service(tiny_model_dir, *args, cwd=tmp_path_factory.mktemp("serve-limited"),
                         env_extra={"HETA_FAST_TOKEN": TOKEN}) as (url, _):
        yield url, results
