"""Which stages run their matrix products in bfloat16 (``HETAConfig.precision``; docs/method.md §0).

Distinct from the dtype the weights are stored in: a float32 model runs a bf16 stage under
``torch.autocast`` (matrix products and attention in bf16, softmax and normalisation statistics
in float32, as autocast's policy has them). Whatever the stage, these stay float32 (the dtype
policy of :mod:`heta_fast.dtypes`): the LM head and the log-softmax of the capture, the fused
vocabulary KL (its head product included), the flow gate's rollout and sums, the curvature
norms. Models stored in float64 or half precision run as stored.

The model stages: ``"forward"`` (the capture forward and the information term's masked passes:
one precision, since the masked passes continue the capture's keys and values and P_orig and
P_masked should carry the same rounding) and ``"curvature"`` (its HVPs). A signal names its stage
in ``precision_stage`` (None: it runs no model pass).

- ``"float32"``: every stage in float32 (the default).
- ``"bfloat16"``: every model stage in bf16, wherever asked, even where bf16 is emulated and slow.
- ``"auto"``: bf16 for a stage only where the device runs bf16 natively (CUDA with bf16; a CPU
  reporting AMX or AVX512-BF16) **and** the stage met the quality gate measured on the curated
  set (:data:`GATED`); float32 everywhere else.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("float32", "bfloat16", "auto")
MODEL_STAGES = ("forward", "curvature")
# Stages whose bf16 results met the quality gate (median Spearman >= 0.99 and 10th percentile
# >= 0.97 against float32 on their term; EVALUATION.md, "bf16 against float32"). Only these go
# bf16 under "auto". Measured on the curated set: curvature 0.9993 / 0.9985 (30 records); the
# forward stage's I 0.981 / 0.957 (100 records: not met; its flow gate 0.9997 / 0.9994).
# Again with native bf16 (AMX): curvature 0.9992 / 0.9974, I 0.979 / 0.946 (not met).
GATED: tuple[str, ...] = ("curvature",)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no native bf16 claimed
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix products natively (so faster than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def stage_dtype(precision: str, stage: str | None, device: torch.device, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of ``stage``'s matrix products under ``precision`` on ``device`` (None: no model pass)."""
    if model_dtype != torch.float32 or stage not in MODEL_STAGES or precision == "float32":
        return model_dtype
    if precision == "bfloat16" or (stage in GATED and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


@contextlib.contextmanager
def stage_precision(precision: str, stage: str | None, adapter):
    """Run the enclosed stage of ``adapter``'s model in the precision :func:`stage_dtype` picks.

    In a bf16 stage the model's LM head runs outside autocast (float32 logits)."""
    device = adapter.device
    if stage_dtype(precision, stage, device, adapter.dtype) == adapter.dtype:  # runs as stored
        yield
        return
    head = adapter.model.get_output_embeddings()
    handles = []
    if head is not None:
        handles.append(head.register_forward_pre_hook(_head_in_float32))
        handles.append(head.register_forward_hook(_head_done))
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _head_in_float32(module, args):
    # The head's input may be a bf16 product's output: the logits are float32 from float32 inputs.
    module._heta_autocast = torch.is_autocast_enabled(args[0].device.type)
    torch.set_autocast_enabled(args[0].device.type, False)
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _head_done(module, args, output):
    torch.set_autocast_enabled(args[0].device.type, module.__dict__.pop("_heta_autocast", False))

