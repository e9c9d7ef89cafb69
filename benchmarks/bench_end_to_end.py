"""One whole attribution of the demo prompt on the default model (CPU), side by side:

* ``reference``: :func:`heta_fast.reference.attribute_reference`, HETA by the definitions one
  piece at a time (materialised attention, n·m sequential HVPs with m = 10, one full forward per
  masked token);
* ``engine-exact``: the engine with ``estimator="exact"`` (m = 10, the reference's probes: the
  same numbers, checked below);
* ``engine-default``: the engine as shipped (``estimator="probing"``, 16 HVPs).

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_end_to_end.py -q --benchmark-columns=min,rounds

The per-phase split of the engine's runs goes to extra_info. No timing assertions.
"""
import pytest
import torch

from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET
from heta_fast.reference import attribute_reference
from heta_fast.request import tokenize_request

IMPLEMENTATIONS = ("reference", "engine-exact", "engine-default")
_results: dict[str, dict] = {}


def _reference(attr):
    req = tokenize_request(attr.tokenizer, DEMO_PROMPT, DEMO_TARGET, attr.adapter.max_length,
                           attr.model.config.vocab_size)
    x = attr.adapter.embed(req.input_ids)
    n_ctx = req.n_context
    return attribute_reference(attr.adapter, x, req.target_positions, req.target_ids, n_ctx,
                               torch.zeros(n_ctx, x.shape[-1], dtype=x.dtype), num_probes=10, seed=attr.config.seed)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_demo_attribution(benchmark, default_attributor, impl):
    attr = default_attributor
    benchmark.group = "demo attribution"
    if impl == "reference":
        out = benchmark.pedantic(_reference, args=(attr,), rounds=1, iterations=1)
        benchmark.extra_info["hvps"] = 10 * out["scores"].shape[1]
    else:
        config = attr.config.replace(estimator="exact", num_probes=10) if impl == "engine-exact" else attr.config
        res = benchmark.pedantic(attr.attribute, args=(DEMO_PROMPT, DEMO_TARGET), kwargs={"config": config},
                                 rounds=1, iterations=1)
        out = {"scores": res.scores, "curvature": res.curvature, "information": res.information, "flow": res.flow}
        benchmark.extra_info.update({f"phase_{k}_s": v for k, v in res.timings.items()})
    benchmark.extra_info["n_context"] = out["scores"].shape[1]
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    _results[impl] = out
    if impl == "engine-exact" and "reference" in _results:
        ref = _results["reference"]
        for key in ("flow", "information", "curvature"):
            torch.testing.assert_close(out[key].double(), ref[key].double(), rtol=1e-2, atol=1e-4)
