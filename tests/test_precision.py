"""The precision option: which stage runs in bf16, the float32 head inside a bf16 stage, and
bf16 results close to float32 ones."""
import pytest
import torch

import heta_fast.precision as precision
from heta_fast import Attributor, HETAConfig
from heta_fast.errors import ConfigError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.precision import stage_dtype, stage_precision
from tests.tiny_models import tiny_model

CPU = torch.device("cpu")
F32, BF16 = torch.float32, torch.bfloat16


def test_stage_dtype_table(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert stage_dtype("float32", "forward", CPU, F32) == F32
    assert stage_dtype("bfloat16", "forward", CPU, F32) == BF16
    assert stage_dtype("bfloat16", "curvature", CPU, F32) == BF16
    assert stage_dtype("bfloat16", None, CPU, F32) == F32  # no model pass (the flow gate)
    assert stage_dtype("bfloat16", "forward", CPU, torch.float64) == torch.float64  # runs as stored
    assert stage_dtype("auto", "forward", CPU, F32) == F32  # no native bf16
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    # The measured decision (EVALUATION.md): the curvature met the gate, the forward stage did not.
    assert stage_dtype("auto", "curvature", CPU, F32) == BF16
    assert stage_dtype("auto", "forward", CPU, F32) == F32
    monkeypatch.setattr(precision, "GATED", ("forward",))
    assert stage_dtype("auto", "forward", CPU, F32) == BF16
    assert stage_dtype("auto", "curvature", CPU, F32) == F32  # native, but not past its gate


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512bw"}))
    assert not precision.native_bf16(CPU)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert precision.native_bf16(CPU)
    assert not precision.native_bf16(torch.device("meta"))


def test_a_bf16_stage_keeps_the_head_in_float32_and_autocast_after_it():
    adapter = ModelAdapter(tiny_model("llama", dtype=F32))
    seen = {}

    def before_head(module, args):
        seen["head_input"] = args[0].dtype
        seen["autocast_in_head"] = torch.is_autocast_enabled("cpu")

    x = adapter.embed(torch.tensor([3, 9, 14, 2, 7]))
    with stage_precision("bfloat16", "forward", adapter):
        # Registered after the stage's own hooks, so it sees the head as the stage leaves it.
        adapter.model.get_output_embeddings().register_forward_pre_hook(before_head)
        logits = adapter.logits(x[None])
        assert torch.is_autocast_enabled("cpu")  # restored after the head
        inner = torch.ones(4, 4) @ torch.ones(4, 4)
    assert logits.dtype == F32 and seen == {"head_input": F32, "autocast_in_head": False}
    assert inner.dtype == BF16 and not torch.is_autocast_enabled("cpu")
    with stage_precision("float32", "forward", adapter):
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_results_are_close_to_float32(tiny_model_dir):
    attributor = Attributor.from_pretrained(str(tiny_model_dir))
    prompt, target = [5, 9, 12, 7, 30, 8, 17], [11]
    full = attributor.attribute(prompt, target)
    half = attributor.attribute(prompt, target, config=HETAConfig(precision="bfloat16"))
    assert half.config["precision"] == "bfloat16" and half.scores.dtype == F32
    for name in ("flow", "curvature", "information", "scores"):
        a, b = getattr(full, name), getattr(half, name)
        assert not torch.equal(a, b) or name == "flow"  # bf16 really ran (the gate may round alike)
        torch.testing.assert_close(b, a, rtol=0.1, atol=0.05 * float(a.abs().max()))


def test_an_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision"):
        HETAConfig(precision="half")


def test_a_half_model_runs_as_stored_whatever_the_precision():
    adapter = ModelAdapter(tiny_model("llama", dtype=BF16))
    x = adapter.embed(torch.tensor([3, 9, 14]))
    with stage_precision("bfloat16", "forward", adapter):
        assert not torch.is_autocast_enabled("cpu")
        assert adapter.logits(x[None]).dtype == BF16
