"""Many target tokens in one request (docs/method.md §2 "Many targets"): what the request shares
across its targets (one capture forward, the information term's masked passes, one seeded probe
draw) changes no target's row. Each row equals the engine's result for a request whose only
target is that row, on the same input."""
import dataclasses

import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.request import tokenize_request
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PROMPT, TARGET = text(5, 9, 13, 20, 31, 7, 11), text(40, 41, 42)


@dataclasses.dataclass(frozen=True)
class OneTarget:
    """The request ``full`` with only its target ``row``: the same input ids and context."""

    full: object
    row: int

    def __getattr__(self, name):
        return getattr(self.full, name)

    @property
    def input_ids(self):
        return self.full.input_ids

    @property
    def target_ids(self):
        return self.full.target_ids[self.row:self.row + 1]

    @property
    def target_positions(self):
        return self.full.target_positions[self.row:self.row + 1]


@pytest.mark.parametrize("arch,estimator", [("llama", "probing"), ("gpt2", "sketch")])
def test_each_target_row_equals_that_target_attributed_alone(arch, estimator):
    cfg = HETAConfig(estimator=estimator, num_probes=2, probing_patterns=4, sketch_rank=6)
    attr = Attributor(tiny_model(arch), tiny_tokenizer(), cfg)
    req = tokenize_request(attr.tokenizer, PROMPT, TARGET, attr.adapter.max_length, attr.model.config.vocab_size)
    assert req.target_ids.numel() == 3
    full = attr._attribute(req, cfg)
    for row in range(3):
        alone = attr._attribute(OneTarget(req, row), cfg)
        for part in ("flow", "curvature", "information", "scores"):
            torch.testing.assert_close(getattr(full, part)[row:row + 1], getattr(alone, part),
                                       rtol=1e-9, atol=1e-12, msg=f"{part}, row {row}")
