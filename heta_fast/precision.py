"""Which stages run their matrix products in bfloat16 (``HETAConfig.precision``; docs/method.md §0).

Distinct from the dtype the weights are stored in. Two ways to run a float32 model's stage on
bf16 products (:func:`stage_mode`):

- ``"bfloat16"``: under ``torch.autocast`` (matrix products and attention in bf16, softmax and
  normalisation statistics in float32, as autocast's policy has them);
- ``"bfloat16-split"``: every linear layer but the LM head through the split-bf16 product of
  :mod:`heta_fast.ops.split_bf16` (each activation as two bf16 halves, bf16 weights, float32
  accumulation and output; attention, norms and everything else in float32). About float32's
  accuracy at two bf16 products per linear; no backward, so only for stages without autograd.

Whatever the stage, these stay float32 (the dtype policy of :mod:`heta_fast.dtypes`): the LM head
and the log-softmax of the capture, the fused vocabulary KL (its head product included), the
flow gate's rollout and sums, the curvature norms. Models stored in float64 or half precision run
as stored.

The model stages: ``"forward"`` (the capture forward and the information term's masked passes:
one precision, since the masked passes continue the capture's keys and values) and
``"curvature"`` (its HVPs). A signal names its stage in ``precision_stage`` (None: it runs no
model pass).

- ``"float32"``: every stage in float32 (the default).
- ``"bfloat16"``: every model stage under autocast, wherever asked, even where bf16 is emulated.
- ``"bfloat16-split"``: the forward stage split-bf16; the curvature in float32 (it needs a
  backward the split product does not have).
- ``"auto"``: bf16 for a stage only where the device runs bf16 natively (CUDA with bf16; a CPU
  reporting AMX or AVX512-BF16) **and** the stage met the quality gate measured on the curated
  set in that mode (:data:`GATED`); float32 everywhere else.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from pathlib import Path

import torch

from .ops import split_bf16

PRECISIONS = ("float32", "bfloat16", "bfloat16-split", "auto")
MODEL_STAGES = ("forward", "curvature")
# The mode in which each stage met the quality gate (median Spearman >= 0.99 and 10th percentile
# >= 0.97 of its term against float32 on the curated set; EVALUATION.md, "bf16 against float32").
# Under "auto" a stage runs in its gated mode where the device has native bf16, float32 elsewhere.
# Measured: the curvature under autocast 0.9993 / 0.9985 (30 records; with AMX 0.9992 / 0.9974);
# the forward stage under autocast fails on I (0.981 / 0.957; with AMX 0.979 / 0.946) and passes
# split (I 0.9996 / 0.9992, its flow gate 0.9999 / 0.9998; 100 records, AMX).
GATED: dict[str, str] = {"curvature": "bfloat16", "forward": "bfloat16-split"}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # either means native bf16 products


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


def cpu_bf16_features() -> list[str]:
    """The bf16 features this CPU reports (:data:`CPU_BF16_FLAGS` and AMX's tile unit), sorted; empty
    where it reports none or the flags cannot be read."""
    return sorted(_cpu_flags() & {*CPU_BF16_FLAGS, "amx_tile"})


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix products natively (so faster than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def split_available(device: torch.device) -> bool:
    """Whether the split-bf16 product has its fast path on ``device`` (a CPU whose torch exports
    MKL's bf16 → float32 GEMM)."""
    return device.type == "cpu" and split_bf16.available()


def stage_mode(precision: str, stage: str | None, device: torch.device, model_dtype: torch.dtype) -> str | None:
    """How ``stage``'s matrix products run under ``precision`` on ``device``: ``"bfloat16"``
    (autocast), ``"bfloat16-split"``, or None (as the model is stored: float32 for a float32 model;
    also for ``stage=None``, a signal that runs no model pass)."""
    if model_dtype != torch.float32 or stage not in MODEL_STAGES or precision == "float32":
        return None
    if precision == "auto":
        mode = GATED.get(stage)
        if mode is None or not native_bf16(device):
            return None
        return None if mode == "bfloat16-split" and not split_available(device) else mode
    if precision == "bfloat16-split":
        return precision if stage == "forward" else None  # the split product has no backward
    return precision


@contextlib.contextmanager
def stage_precision(precision: str, stage: str | None, adapter):
    """Run the enclosed stage of ``adapter``'s model in the mode :func:`stage_mode` picks.

    Under autocast the model's LM head runs outside it (float32 logits); the split mode leaves the
    head alone and replaces, for the stage, the forward of every other ``nn.Linear``."""
    mode = stage_mode(precision, stage, adapter.device, adapter.dtype)
    if mode is None:
        yield
        return
    head = adapter.model.get_output_embeddings()
    if mode == "bfloat16-split":
        with _split_linears(adapter.model, head):
            yield
        return
    handles = []
    if head is not None:
        handles.append(head.register_forward_pre_hook(_head_in_float32))
        handles.append(head.register_forward_hook(_head_done))
    try:
        with torch.autocast(adapter.device.type, dtype=torch.bfloat16):
            yield
    finally:
        for handle in handles:
            handle.remove()


# nn.Linear -> (the weight it was made from, that weight's version, its bf16 copy): one rounding
# per weight for the model's lifetime, redone if the weight is replaced or changed in place.
_BF16_WEIGHTS: "weakref.WeakKeyDictionary[torch.nn.Linear, tuple]" = weakref.WeakKeyDictionary()


def _bf16_weight(layer: torch.nn.Linear) -> torch.Tensor:
    weight = layer.weight
    entry = _BF16_WEIGHTS.get(layer)
    if entry is None or entry[0] is not weight or entry[1] != weight._version:
        entry = (weight, weight._version, weight.detach().to(torch.bfloat16).contiguous())
        _BF16_WEIGHTS[layer] = entry
    return entry[2]


class _SharedHalves:
    """The last input's bf16 halves: the q/k/v (and gate/up) projections read one tensor, so it is
    split once. Holds that input alive, so its identity cannot be reused by another tensor."""

    def __init__(self):
        self.x, self.version, self.halves = None, None, None

    def of(self, x: torch.Tensor):
        if self.x is not x or self.version != x._version:
            self.x, self.version, self.halves = x, x._version, split_bf16.split_halves(x)
        return self.halves


# Split stages active on this thread: id(model) -> [depth, the thread's _SharedHalves].
_THREAD_STAGES = threading.local()
# Models whose linears carry the split forward: id(model) -> [stages open on any thread, saved
# forwards]. The patch is installed by the first stage to open on a model and removed by the last
# to close, under the lock; whether a call splits is decided by the calling thread's own stages,
# so threads with and without a split stage can share one model at any time.
_PATCHED: dict[int, list] = {}
_PATCH_LOCK = threading.Lock()


def _thread_stages() -> dict[int, list]:
    stages = getattr(_THREAD_STAGES, "stages", None)
    if stages is None:
        stages = _THREAD_STAGES.stages = {}
    return stages


def _split_forward(key: int, layer: torch.nn.Linear, original, x: torch.Tensor) -> torch.Tensor:
    stage = _thread_stages().get(key)
    if stage is None:  # no split stage of this model on this thread: the layer's own forward
        return original(x)
    if x.dtype != torch.float32 or (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)):
        return original(x)  # a pass that needs a backward keeps float32
    return split_bf16.split_bf16_linear(x, _bf16_weight(layer), layer.bias, stage[1].of(x))


def _install(model: torch.nn.Module, head) -> None:
    key = id(model)
    with _PATCH_LOCK:
        entry = _PATCHED.get(key)
        if entry is None:
            saved = []
            for layer in model.modules():
                if isinstance(layer, torch.nn.Linear) and layer is not head and layer.weight.dtype == torch.float32:
                    saved.append((layer, layer.__dict__.get("forward")))
                    layer.forward = functools.partial(_split_forward, key, layer, layer.forward)
            entry = _PATCHED[key] = [0, saved]
        entry[0] += 1


def _uninstall(model: torch.nn.Module) -> None:
    key = id(model)
    with _PATCH_LOCK:
        entry = _PATCHED[key]
        entry[0] -= 1
        if entry[0]:
            return
        del _PATCHED[key]
        for layer, own in entry[1]:
            if own is None:
                del layer.forward
            else:
                layer.forward = own


@contextlib.contextmanager
def _split_linears(model: torch.nn.Module, head):
    # The model's linear layers (not the head) get the split forward while any thread has a split
    # stage open on the model (autocast, being thread-local, needs no such patch); the patched
    # forward splits only for the threads inside such a stage.
    stages, key = _thread_stages(), id(model)
    stage = stages.get(key)
    if stage is not None:  # nested in this thread's own stage on the model: already split
        stage[0] += 1
    else:
        _install(model, head)
        stage = stages[key] = [1, _SharedHalves()]
    try:
        yield
    finally:
        stage[0] -= 1
        if not stage[0]:
            del stages[key]
            _uninstall(model)


def _head_in_float32(module, args):
    # The head's input may be a bf16 product's output: the logits are float32 from float32 inputs.
    module._heta_autocast = torch.is_autocast_enabled(args[0].device.type)
    torch.set_autocast_enabled(args[0].device.type, False)
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _head_done(module, args, output):
    torch.set_autocast_enabled(args[0].device.type, module.__dict__.pop("_heta_autocast", False))

