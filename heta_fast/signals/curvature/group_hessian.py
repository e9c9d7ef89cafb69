"""The group operator: (H_j v_j)_j for several jobs' Hessians in one batched pass (group.py).

F(H) = Σ_j f_j(H_j) over the jobs' inputs stacked and right-padded, H [J, L, d]: no job reads
another's rows, so F's Hessian is block-diagonal and one vmapped reverse-over-reverse product
with V = (v_1, ..., v_J) returns every job's own H_j v_j. It runs eagerly (group.py) or from
static buffers captured in a CUDA graph (cuda_graphs.py).
"""
from __future__ import annotations

import torch
from torch.func import grad, vjp, vmap

from ...dtypes import at_least_float32
from ...model.adapter import ModelAdapter
from ...model.rotary import settled_rotary


def padded_stack(inputs: list[torch.Tensor], length: int, jobs: int | None = None) -> torch.Tensor:
    """inputs: per job x_j [n_j, d], n_j ≤ length -> [jobs, length, d]: each job's rows right-padded
    with copies of its last row (which keeps the padding's norms those of real rows; by causality
    the padding cannot reach f_j), then job slots after the inputs filled with the first job's
    rows (a graph's spare slots: finite inputs that no probe reaches). jobs None: len(inputs)."""
    rows = [torch.cat([x, x[-1:].expand(length - x.shape[0], -1)]) for x in inputs]
    rows += [rows[0]] * ((jobs or len(inputs)) - len(inputs))
    return torch.stack(rows)


class GroupHessian:
    """V [k, J, L, d] -> (H_j V_j)_j for the jobs' Hessians, one batched pass per call.

    inputs: per job x_j [n_j, d] (right-padded to L with copies of its last row, which keeps the
    padding's norms those of real rows; the padding cannot reach f_j); positions: per job the row
    predicting its target (n_j - 1); tokens: per job the target id.
    """

    def __init__(self, adapter: ModelAdapter, inputs: list[torch.Tensor], positions: list[int], tokens: list[int]):
        h0 = padded_stack(inputs, max(x.shape[0] for x in inputs)).detach()
        self._setup(adapter, h0, torch.tensor(positions, device=h0.device), torch.tensor(tokens, device=h0.device),
                    settle=max(positions) + 1)

    @classmethod
    def of_padded(cls, adapter: ModelAdapter, h0: torch.Tensor, positions: torch.Tensor,
                  tokens: torch.Tensor) -> "GroupHessian":
        """The operator over inputs already stacked and padded (h0 [J, L, d], positions [J] long,
        tokens [J] long: a graph's static buffers), without a host synchronisation."""
        operator = cls.__new__(cls)
        operator._setup(adapter, h0, positions, tokens, settle=h0.shape[1])
        return operator

    def _setup(self, adapter: ModelAdapter, h0: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor,
               settle: int) -> None:
        """settle: the length whose rotary frequencies the padded pass runs with (the jobs' own:
        group.py groups only jobs whose lengths share them; heta_fast.model.rotary)."""
        self.adapter, self.h0, self.positions, self.tokens = adapter, h0, positions, tokens
        self.rows = torch.arange(h0.shape[0], device=h0.device)
        self.head = adapter.model.get_output_embeddings()
        self.transform = adapter.logit_transform()
        self.applied = 0
        with settled_rotary(adapter.model, settle):
            _, self._vjp = vjp(grad(self.log_prob), self.h0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(J, L, d): the operator acts on vectors shaped like the padded inputs."""
        return tuple(self.h0.shape)

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        """h [J, L, d] -> Σ_j log p(token_j | h_j[: position_j + 1]), a scalar."""
        hidden = self.adapter.final_hidden(h)[self.rows, self.positions]  # [J, d]
        # The LM head module itself, so a bf16 stage keeps it in float32 as alone (precision.py).
        logits = at_least_float32(self.transform(self.head(hidden)))
        return torch.log_softmax(logits, dim=-1).gather(1, self.tokens[:, None]).sum()

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors [k, J, L, d] -> [k, J, L, d] (one batched pass)."""
        self.applied += vectors.shape[0] * vectors.shape[1]
        (out,) = vmap(self._vjp)(vectors.to(self.h0))
        return out
