"""One lock per model: the passes of one attribution hold the model to themselves.

A pass changes state that lives on the model, not on the thread: the attention implementation
transformers runs (heta's recording, packed and eager attention and SDPA are switched in per
pass, model/attention/switch.py), and under a split-bf16 stage the linears' forward. Two threads
running attributions on one model at once would run each other's attention. So every entry
point of the engine that runs the model takes the model's lock for the whole attribution;
threads sharing an :class:`~heta_fast.engine.Attributor` (a web back end's worker pool, say)
run one attribution at a time on it, each with exactly its own numbers. Different models run in
parallel. Re-entrant, so an entry point may call another on the same thread.

:func:`holding_the_model` is that rule as a decorator: the engine's entry points and every
function of the evaluation that runs the model (baselines, faithfulness metrics, decoding, the
embedding-noise hook) hold the lock of the model their first argument names.
"""
from __future__ import annotations

import functools
import threading
import weakref

from torch import nn

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock of ``model`` (the same object for every adapter of that model)."""
    with _GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def lock_of(owner) -> threading.RLock:
    """The model lock of ``owner``: a model (``nn.Module``), a ModelAdapter (``.lock``) or anything
    holding one as ``.adapter`` (an Attributor)."""
    if isinstance(owner, nn.Module):
        return model_lock(owner)
    adapter = getattr(owner, "adapter", owner)
    lock = getattr(adapter, "lock", None)
    if lock is None:
        raise TypeError(f"{type(owner).__name__} names no model: expected a model, a ModelAdapter or an Attributor")
    return lock


def holding_the_model(fn):
    """Run ``fn(owner, ...)`` under :func:`lock_of` ``owner``: one pass sequence at a time on a model."""
    @functools.wraps(fn)
    def held(owner, *args, **kwargs):
        with lock_of(owner):
            return fn(owner, *args, **kwargs)
    return held
