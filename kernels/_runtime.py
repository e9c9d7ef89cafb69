"""Facts about the Triton runtime shared by the kernel launchers."""
from __future__ import annotations

import os

import triton


def interpreting(kernel=None) -> bool:
    """True when kernels run through triton's CPU interpreter (TRITON_INTERPRET=1).

    ``triton.jit`` reads TRITON_INTERPRET when it decorates, so when a kernel is given its type
    (not the current environment) decides.
    """
    if kernel is not None:
        try:
            from triton.runtime.interpreter import InterpretedFunction
        except ImportError:  # layout of other triton versions
            pass
        else:
            return isinstance(kernel, InterpretedFunction)
    try:
        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
