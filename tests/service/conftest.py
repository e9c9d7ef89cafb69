"""Fixtures of the service tests: two services on the tiny model, each a real process started once
for the whole run (both at the first test that needs one, so they load at the same time): an open
one with the default limits, and one with a token and tight limits."""
from __future__ import annotations

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.service.helpers import TOKEN, ServiceProcess  # noqa: E402


@pytest.fixture(scope="session")
def tiny_services(tiny_model_dir, tmp_path_factory):
    """``{"open": ServiceProcess, "limited": (ServiceProcess, results folder)}``, started together."""
    results = tmp_path_factory.mktemp("results")
    started = []
    try:
        # The tiny model served with the default limits (a 60 s job time limit).
        started.append(ServiceProcess(tiny_model_dir, "--job-timeout", "60", cwd=tmp_path_factory.mktemp("serve")))
        # With a token (from the environment), a queue of 2, a 4 s job time limit, 3 kept results,
        # one job at a time and a results folder.
        started.append(ServiceProcess(tiny_model_dir, "--max-queue", "2", "--job-timeout", "4", "--max-results", "3",
                                      "--max-group", "1", "--results-dir", str(results),
                                      cwd=tmp_path_factory.mktemp("serve-limited"),
                                      env_extra={"HETA_FAST_TOKEN": TOKEN}))
        yield {"open": started[0], "limited": (started[1], results)}
    finally:
        for service in started:
            service.stop()


@pytest.fixture(scope="session")
def service_url(tiny_services):
    """The open service's address."""
    return tiny_services["open"].ready()


@pytest.fixture(scope="session")
def limited_service(tiny_services):
    """``(url, results folder)`` of the service with a token and tight limits."""
    service, results = tiny_services["limited"]
    return service.ready(), results
