"""The precision option: which stage runs in bf16, the float32 head inside a bf16 stage, and
bf16 results close to float32 ones."""
import copy

import pytest
import torch

import heta_fast.precision as precision
from heta_fast import Attributor, HETAConfig
from heta_fast.errors import ConfigError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.precision import stage_mode, stage_precision
from tests.tiny_models import tiny_model

CPU = torch.device("cpu")
F32, BF16 = torch.float32, torch.bfloat16


def test_stage_mode_table(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert stage_mode("float32", "forward", CPU, F32) is None
    assert stage_mode("bfloat16", "forward", CPU, F32) == "bfloat16"
    assert stage_mode("bfloat16", "curvature", CPU, F32) == "bfloat16"
    assert stage_mode("bfloat16", None, CPU, F32) is None  # no model pass (the flow gate)
    assert stage_mode("bfloat16", "forward", CPU, torch.float64) is None  # runs as stored
    assert stage_mode("bfloat16-split", "forward", CPU, F32) == "bfloat16-split"
    assert stage_mode("bfloat16-split", "curvature", CPU, F32) is None  # no backward: float32
    assert stage_mode("auto", "forward", CPU, F32) is None  # no native bf16
    assert stage_mode("auto", "curvature", CPU, F32) is None
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "split_available", lambda device: True)
    # The measured decisions (EVALUATION.md): the curvature met the gate under autocast, the
    # forward stage only split.
    assert stage_mode("auto", "curvature", CPU, F32) == "bfloat16"
    assert stage_mode("auto", "forward", CPU, F32) == "bfloat16-split"
    monkeypatch.setattr(precision, "split_available", lambda device: False)
    assert stage_mode("auto", "forward", CPU, F32) is None  # its gated mode without its fast path
    monkeypatch.setattr(precision, "GATED", {"forward": "bfloat16"})
    assert stage_mode("auto", "forward", CPU, F32) == "bfloat16"
    assert stage_mode("auto", "curvature", CPU, F32) is None  # native, but not past its gate


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


def test_the_split_stage_is_the_float32_model_with_bf16_weights():
    adapter = ModelAdapter(tiny_model("llama", dtype=F32))
    x = adapter.embed(torch.tensor([3, 9, 14, 2, 7, 11, 5]))[None] * 4
    rounded = ModelAdapter(copy.deepcopy(adapter.model))
    head = rounded.model.get_output_embeddings()
    with torch.no_grad():
        for m in rounded.model.modules():
            if isinstance(m, torch.nn.Linear) and m is not head:
                m.weight.copy_(m.weight.to(BF16).float())
        want = rounded.logits(x)
        with stage_precision("bfloat16-split", "forward", adapter):
            split = adapter.logits(x)
        with stage_precision("bfloat16", "forward", adapter):
            half = adapter.logits(x)
    split_err, half_err = float((split - want).abs().max()), float((half - want).abs().max())
    # Only the weights are rounded: the activations keep ~16 bits, the outputs stay float32.
    assert split_err < 1e-4 * float(want.abs().max()) and split_err * 50 < half_err, (split_err, half_err)


def test_the_split_mode_in_the_engine(tiny_model_dir):
    attributor = Attributor.from_pretrained(str(tiny_model_dir))
    prompt, target = [5, 9, 12, 7, 30, 8, 17, 21, 3, 14], [11]
    full = attributor.attribute(prompt, target)
    split = attributor.attribute(prompt, target, config=HETAConfig(precision="bfloat16-split"))
    assert split.config["precision"] == "bfloat16-split" and split.information.dtype == F32
    # The curvature needs a backward, which the split product lacks: it ran in float32.
    assert torch.equal(split.curvature, full.curvature)
    for name in ("flow", "information", "scores"):
        a, b = getattr(full, name), getattr(split, name)
        assert not torch.equal(a, b)  # the split ran (its bf16 weights move the result a little)
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-2 * float(a.abs().max()))
    leaked = [m for m in attributor.model.modules() if "forward" in m.__dict__]
    assert leaked == []  # every linear's own forward is back


def test_a_pass_that_needs_a_backward_keeps_float32_inside_the_split_stage():
    adapter = ModelAdapter(tiny_model("llama", dtype=F32))
    layer = next(m for m in adapter.model.modules() if isinstance(m, torch.nn.Linear))
    x = torch.randn(3, layer.in_features, requires_grad=True)
    with stage_precision("bfloat16-split", "forward", adapter):
        graded = layer(x)
        with torch.no_grad():
            split = layer(x.detach())
    assert graded.grad_fn is not None
    torch.testing.assert_close(graded.detach(), torch.nn.functional.linear(x.detach(), layer.weight, layer.bias))
    assert not torch.equal(split, graded.detach())
    assert "forward" not in layer.__dict__


def test_another_thread_sees_the_layers_own_forward_during_a_split_stage():
    import threading

    adapter = ModelAdapter(tiny_model("llama", dtype=F32))
    layer = next(m for m in adapter.model.modules() if isinstance(m, torch.nn.Linear))
    x = torch.randn(5, layer.in_features)
    out = {}
    with torch.no_grad(), stage_precision("bfloat16-split", "forward", adapter):
        out["here"] = layer(x)
        worker = threading.Thread(target=lambda: out.update(there=layer(x)))
        worker.start()
        worker.join()
    with torch.no_grad():
        plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert torch.equal(out["there"], plain) and not torch.equal(out["here"], plain)


def test_split_stages_on_one_model_from_two_threads_may_overlap():
    import threading

    adapter = ModelAdapter(tiny_model("llama", dtype=F32))
    x = adapter.embed(torch.tensor([3, 9, 14, 2, 7, 11, 5]))[None] * 4
    with torch.no_grad():
        plain = adapter.logits(x)
        with stage_precision("bfloat16-split", "forward", adapter):
            want = adapter.logits(x)
    assert (want - plain).abs().max() > 1e-4 * plain.abs().max()  # the two are told apart below
    a_open, b_open, a_closed = threading.Event(), threading.Event(), threading.Event()
    out, errors = {}, []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported in the main thread
                errors.append(exc)
                a_open.set(), b_open.set(), a_closed.set()
        return run

    @guarded
    def first():
        with torch.no_grad(), stage_precision("bfloat16-split", "forward", adapter):
            a_open.set()
            b_open.wait(10)
            out["first"] = adapter.logits(x)
        a_closed.set()

    @guarded
    def second():
        with torch.no_grad(), stage_precision("bfloat16-split", "forward", adapter):
            b_open.set()
            a_open.wait(10)
            out["bystander"] = _run_in_thread(lambda: adapter.logits(x))  # a thread with no stage
            a_closed.wait(10)  # the first thread's stage closed while this one is still open
            out["second"] = adapter.logits(x)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for name in ("first", "second"):
        torch.testing.assert_close(out[name], want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))
    torch.testing.assert_close(out["bystander"], plain, rtol=1e-6, atol=1e-6 * float(plain.abs().max()))
    assert [m for m in adapter.model.modules() if "forward" in m.__dict__] == []


def test_a_split_stage_nested_in_its_own_thread_stays_split_until_the_outer_one_closes():
    adapter = ModelAdapter(tiny_model("llama", dtype=F32))
    layer = next(m for m in adapter.model.modules() if isinstance(m, torch.nn.Linear))
    x = torch.randn(4, layer.in_features)
    with torch.no_grad():
        plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
        with stage_precision("bfloat16-split", "forward", adapter):
            with stage_precision("bfloat16-split", "forward", adapter):
                inner = layer(x)
            after_inner = layer(x)
        after_outer = layer(x)
    assert not torch.equal(inner, plain) and torch.equal(after_inner, inner)
    assert torch.equal(after_outer, plain) and "forward" not in layer.__dict__


def _run_in_thread(fn):
    import threading

    box = {}
    worker = threading.Thread(target=lambda: box.update(value=fn()))
    worker.start()
    worker.join(30)
    return box["value"]
