"""The sink / term-scale grid of HETA variants (issue 17 §2-§3): every variant derived from one
engine run equals the engine run with that variant's configuration."""
import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.evaluate.baselines.heta_variants import VARIANTS, heta_variants
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PROMPT = text(5, 9, 13, 20, 31, 7)
GRID = [name for name, v in VARIANTS.items() if v.sinks is not None]


def test_the_grid_covers_both_sink_modes_and_every_scale():
    assert {(VARIANTS[n].sinks, VARIANTS[n].term_scale) for n in GRID} == {
        (s, t) for s in ("keep", "exclude") for t in ("raw", "max", "simplex", "rank")} - {("keep", "raw")}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_grid_variants_equal_engine_runs_with_their_sinks_and_scale(arch):
    # A low threshold makes the random model's most attended positions sinks, so "exclude" bites.
    cfg = HETAConfig(num_probes=2, sink_threshold=0.1)
    attr = Attributor(tiny_model(arch), tiny_tokenizer(), cfg)
    target = text(40, 41)
    variants = heta_variants(attr, PROMPT, target, ["heta"] + GRID)
    assert any(variants["heta"].sinks), "the test needs at least one sink"
    for name, res in variants.items():
        v = VARIANTS[name]
        alone = Attributor(attr.model, attr.tokenizer,
                           cfg.replace(sinks=v.sinks or "keep", term_scale=v.term_scale or "raw"))
        expected = alone.attribute(PROMPT, target)
        torch.testing.assert_close(res.scores, expected.scores)
        torch.testing.assert_close(res.flow, expected.flow)
        assert res.config["sinks"] == expected.config["sinks"]
        assert res.config["term_scale"] == expected.config["term_scale"]
    # excluding the sinks moves mass: the variants differ from the paper's form where sinks exist
    sinks = torch.tensor(variants["heta"].sinks)
    assert float(variants["heta_nosink"].flow[:, sinks].abs().sum()) == 0.0
    assert float(variants["heta"].flow[:, sinks].sum()) > 0.0
