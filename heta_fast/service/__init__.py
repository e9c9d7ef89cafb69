"""``heta-fast serve``: HETA attribution as an HTTP service (FastAPI + uvicorn, the ``service`` extra).

``create_app(attributor, settings)`` builds the ASGI app; one worker thread owns the model
(``jobs.py``); requests are checked before they are queued (``admit.py``); limits and access are
``ServiceSettings``. Importing this package needs fastapi.
"""
from .app import create_app
from .settings import ServiceSettings

__all__ = ["create_app", "ServiceSettings"]
