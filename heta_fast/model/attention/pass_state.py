"""The state of the pass in flight, for attention functions that need more than their arguments.

transformers calls a registered attention function with the module and its tensors only. The
recording capture (a recorder) and the packed masked passes (the packing layout) need per-pass
state beyond that; it travels in this one context variable, set for the duration of the pass.
"""
from __future__ import annotations

import contextlib
import contextvars

_PASS: contextvars.ContextVar[object | None] = contextvars.ContextVar("heta_pass", default=None)


@contextlib.contextmanager
def pass_state(state: object):
    """Make ``state`` the current pass's state for the block."""
    token = _PASS.set(state)
    try:
        yield state
    finally:
        _PASS.reset(token)


def current(kind: type, implementation: str):
    """The current pass's state, which must be a ``kind``; else a RuntimeError naming ``implementation``."""
    state = _PASS.get()
    if not isinstance(state, kind):
        raise RuntimeError(f"{implementation} attention ran outside a pass that set its {kind.__name__}")
    return state
