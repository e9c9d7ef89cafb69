"""How to call a transformers model with or without a KV cache, across releases."""
from __future__ import annotations

import functools
import inspect

from torch import nn


def cache_kwargs(module: nn.Module, cache) -> dict:
    """Keyword arguments that run ``module`` without a cache (None) or extending ``cache``."""
    if cache is None:
        return {"use_cache": False}
    return {"use_cache": True, _cache_keyword(type(module)): cache}


@functools.cache
def _cache_keyword(module_type: type) -> str:
    """``cache`` in recent transformers (where ``past_key_values`` is deprecated), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(module_type.forward).parameters else "past_key_values"
