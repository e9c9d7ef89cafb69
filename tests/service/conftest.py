"""Fixtures of the service tests: a session-wide service on the tiny model."""
from __future__ import annotations

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.service.helpers import running_service  # noqa: E402


@pytest.fixture(scope="session")
def service_url(tiny_model_dir, tmp_path_factory):
    """The tiny model served with the default limits (a 60 s job time limit)."""
    with running_service(tiny_model_dir, "--job-timeout", "60", cwd=tmp_path_factory.mktemp("serve")) as (url, _):
        yield url
