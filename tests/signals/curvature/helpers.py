"""Shared pieces of the curvature tests: tiny float64 models and their exact Hessians."""
from __future__ import annotations

import torch
from torch.func import hessian

from heta_fast import Attributor, HETAConfig
from heta_fast.model.adapter import ModelAdapter
from heta_fast.reference import target_log_prob
from heta_fast.request import tokenize_request
from heta_fast.signals.curvature import HessianOperator, TargetFunction
from heta_fast.signals.curvature.group import CurvatureItem
from tests.tiny_models import text, tiny_model, tiny_tokenizer

IDS = [5, 9, 2, 30, 11, 7]
TOKEN = 7
# Requests of a curvature group: different lengths, one with 3 targets.
PAIRS = [(text(10, 3, 44, 7), text(30)), (text(*range(5, 18)), text(14, 15, 16)), (text(4, 8), text(9)),
         (text(*range(20, 31)), text(33))]


def setup(arch: str = "gpt2", ids=IDS, **overrides):
    """(adapter, embeds [n, d] float64, position n-1)."""
    adapter = ModelAdapter(tiny_model(arch, **overrides))
    x = adapter.embed(torch.tensor(ids))
    return adapter, x, len(ids) - 1


def target(adapter, x, position, token=TOKEN, layers=0) -> TargetFunction:
    return TargetFunction(adapter, x[: position + 1], torch.tensor(position), torch.tensor(token), layers=layers)


def operator(adapter, x, position, token=TOKEN, **kw) -> HessianOperator:
    return HessianOperator(target(adapter, x, position, token), **kw)


def full_hessian(adapter, x, position, token=TOKEN) -> torch.Tensor:
    """∇²_X f as [n, d, n, d], written independently of heta_fast.signals.curvature (reference's f)."""
    return hessian(lambda e: target_log_prob(adapter, e, position, token))(x[: position + 1])


def blocks(h: torch.Tensor) -> torch.Tensor:
    """Diagonal blocks [n, d, d] of a [n, d, n, d] matrix."""
    return torch.stack([h[i, :, i, :] for i in range(h.shape[0])])


class MatrixOperator:
    """A dense symmetric matrix [n, d, n, d] as a curvature operator (synthetic tests)."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.applied = 0

    @property
    def shape(self):
        return tuple(self.matrix.shape[:2])

    def __call__(self, v):
        self.applied += v.shape[0]
        return torch.einsum("ndme,bme->bnd", self.matrix, v.to(self.matrix))


def group_items(pairs=PAIRS) -> tuple[ModelAdapter, list[CurvatureItem]]:
    """(adapter of a float64 tiny Llama, one CurvatureItem per (prompt, target) pair)."""
    att = Attributor(tiny_model("llama", dtype=torch.float64), tiny_tokenizer(), HETAConfig())
    items = []
    for prompt, target_text in pairs:
        req = tokenize_request(att.tokenizer, prompt, target_text, att.adapter.max_length, att.adapter.vocab_size)
        items.append(CurvatureItem(att.adapter.embed(req.input_ids), req.target_positions, req.target_ids,
                                   req.n_context))
    return att.adapter, items
