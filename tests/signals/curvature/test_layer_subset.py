"""layer_subset=N: curvature w.r.t. the residual stream entering the last N layers."""
import pytest
import torch
from torch.func import hessian

from heta_fast.errors import ConfigError
from heta_fast.reference import rademacher_probes
from heta_fast.signals.curvature import HessianOperator
from heta_fast.signals.curvature.exact import exact_block_hutchinson
from tests.signals.curvature.helpers import operator, setup, target


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gptj"])
def test_all_layers_equals_the_embedding_level_result(arch):
    """GPT-2's layer-0 input is X + position embeddings: a constant shift, the same Hessian."""
    adapter, x, p = setup(arch)
    probes = rademacher_probes(p, 3, x.shape[1], seed=0)
    rows = torch.arange(p)
    want = exact_block_hutchinson(operator(adapter, x, p), rows, probes, chunk=8)
    got = exact_block_hutchinson(HessianOperator(target(adapter, x, p, layers=len(adapter.layers))), rows, probes, 8)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


def test_primal_is_the_hidden_state_entering_the_cut_layer():
    adapter, x, p = setup("llama")
    with torch.no_grad():
        hidden = adapter.model(inputs_embeds=x[None], output_hidden_states=True).hidden_states
    torch.testing.assert_close(target(adapter, x, p, layers=1).primal(), hidden[1][0])  # input of layer 1 of 2


def test_last_layer_curvature_equals_the_hessian_of_the_last_layer_function():
    """The Hessian w.r.t. the last layer's input, from torch.func.hessian of an independent
    function that runs only the last decoder layer, the final norm and the LM head."""
    adapter, x, p = setup("gpt2")
    tgt = target(adapter, x, p, layers=1)
    h0 = tgt.primal()
    model = adapter.model

    def last_layer_f(h):
        out = model.transformer.h[-1](h[None])
        out = out[0] if isinstance(out, tuple) else out
        logits = model.lm_head(model.transformer.ln_f(out))[0, p]
        return torch.log_softmax(logits, -1)[7]

    full = hessian(last_layer_f)(h0)
    probes = rademacher_probes(p, 2, x.shape[1], seed=1)
    want = torch.stack([torch.stack([(full[i, :, i] @ probes[i, k]).abs().sum() for k in range(2)]).mean()
                        for i in range(p)])
    got = exact_block_hutchinson(HessianOperator(tgt), torch.arange(p), probes, chunk=10)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


class _Tripwire(torch.autograd.Function):
    """Identity whose backward raises: marks a module that no backward pass may reach."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("a backward pass reached the bottom layer")


@pytest.mark.parametrize("layers,reaches_bottom", [(1, False), (2, True)])
def test_backward_passes_stop_at_the_cut(layers, reaches_bottom):
    adapter, x, p = setup("llama")
    handle = adapter.layers[0].register_forward_hook(lambda m, args, out: _Tripwire.apply(out))
    try:
        def run():
            op = HessianOperator(target(adapter, x, p, layers=layers))
            op(torch.ones(2, *op.shape, dtype=torch.float64))

        if reaches_bottom:
            with pytest.raises(AssertionError, match="bottom layer"):
                run()
        else:
            run()
    finally:
        handle.remove()


def test_more_layers_than_the_model_has_is_a_config_error():
    adapter, x, p = setup("gpt2")
    with pytest.raises(ConfigError, match="layer_subset=3"):
        target(adapter, x, p, layers=3)
