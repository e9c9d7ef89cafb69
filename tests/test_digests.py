"""Bitwise regression digests: every output of ``attribute`` on fixed inputs, hashed.

The digests in ``tests/digests.json`` were recorded before the engine was reshaped (issue 11)
and must not change when code moves: a refactor that changes one bit of one score fails here.
A change that is *meant* to change numbers (a new default, a new precision) re-records them
(``HETA_RECORD_DIGESTS=1 python -m pytest tests/test_digests.py``) and says why in its commit.

Bitwise equality only holds for one build of torch and transformers on one kind of CPU, with a
fixed thread count: the file records the versions, and under other versions the check is
skipped with the reason (the tolerance-based engine-vs-reference tests still run everywhere).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import transformers

from heta_fast import Attributor, HETAConfig
from tests.tiny_models import ARCHITECTURES, text, tiny_model, tiny_tokenizer

DIGESTS = Path(__file__).with_name("digests.json")
RECORD = os.environ.get("HETA_RECORD_DIGESTS") == "1"
PROMPT = text(10, 3, 44, 7, 21, 9, 5, 17)
TARGET = text(30, 12)

# name -> (architecture, model dtype, config overrides); every architecture with the default
# config, and the options that select other code paths on one of them.
CASES = {f"{arch}-default": (arch, torch.float32, {}) for arch in ARCHITECTURES}
CASES.update({f"{arch}-float64-exact": (arch, torch.float64, {"estimator": "exact", "num_probes": 2})
              for arch in ARCHITECTURES})
CASES.update({
    "llama-sketch": ("llama", torch.float32, {"estimator": "sketch", "sketch_rank": 8}),
    "llama-window": ("llama", torch.float32, {"window_size": 4, "window_overlap": 0.5}),
    "llama-window-exact": ("llama", torch.float64, {"window_size": 4, "estimator": "exact", "num_probes": 2}),
    "llama-fisher": ("llama", torch.float32, {"use_fisher": True}),
    "llama-layer-subset": ("llama", torch.float32, {"layer_subset": 1}),
    "llama-mask-mean": ("llama", torch.float32, {"mask_scheme": "mean"}),
    "llama-mask-unk": ("llama", torch.float32, {"mask_scheme": "unk"}),
    "llama-flow-only": ("llama", torch.float32, {"components": ("flow",)}),
    "llama-ungated": ("llama", torch.float32, {"components": ("curvature", "information")}),
    "llama-small-batches": ("llama", torch.float32, {"max_batch": 2, "seed": 7}),
    "mistral-window-exact": ("mistral", torch.float32, {"window_size": 5, "estimator": "exact", "num_probes": 2}),
    "gpt2-beta-gamma": ("gpt2", torch.float32, {"beta": 0.2, "gamma": 1.5}),
})


def _versions() -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _tensor_digest(t: torch.Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:32]


def digest(result) -> dict:
    """sha256 prefixes of every numeric output of an Attribution (and its ids)."""
    out = {name: _tensor_digest(getattr(result, name))
           for name in ("scores", "flow", "curvature", "information")}
    out["ids"] = hashlib.sha256(json.dumps([result.context_ids, result.target_ids]).encode()).hexdigest()[:16]
    return out


def _stored() -> dict:
    return json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}


def _check(name: str, got: dict) -> None:
    stored = _stored()
    if RECORD:
        stored.setdefault("versions", _versions())
        stored.setdefault("cases", {})[name] = got
        DIGESTS.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        return
    if stored.get("versions") != _versions():
        pytest.skip(f"digests recorded under {stored.get('versions')}, running {_versions()}: bitwise "
                    f"equality is only defined for one build")
    assert name in stored["cases"], f"no recorded digest for {name}"
    assert got == stored["cases"][name]


@pytest.fixture
def one_thread():
    """Reductions split over threads change rounding: the digests are taken with one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _attributor(arch: str, dtype: torch.dtype, overrides: dict) -> Attributor:
    return Attributor(tiny_model(arch, dtype=dtype), tiny_tokenizer(), HETAConfig(**overrides))


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_model_outputs_are_bitwise_unchanged(name, one_thread):
    arch, dtype, overrides = CASES[name]
    result = _attributor(arch, dtype, overrides).attribute(PROMPT, TARGET)
    _check(name, digest(result))


def test_generation_outputs_are_bitwise_unchanged(one_thread):
    result = _attributor("llama", torch.float32, {}).generate_and_attribute(text(4, 8, 15), max_new_tokens=3)
    _check("llama-generate", digest(result))


@pytest.mark.real_model
def test_demo_is_bitwise_unchanged(one_thread):
    from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET

    attributor = Attributor.from_pretrained("smollm2-135m")
    _check("demo", digest(attributor.attribute(DEMO_PROMPT, DEMO_TARGET)))
