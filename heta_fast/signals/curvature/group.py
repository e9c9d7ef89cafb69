"""S for several requests in shared passes (cross-request batching; the scheduler's groups).

A *job* is one (request, window, target): f_j = log p(token_j | x_j) with x_j [n_j, d] the
window's input up to the target's position. The group function F(H) = Σ_j f_j(H_j) over
H [J, L, d] (every x_j right-padded to the longest, L) has a block-diagonal Hessian: no job
reads another's rows, so the cross blocks vanish and one batched product with
V = (v_1, ..., v_J) returns (H_1 v_1, ..., H_J v_J). A pass of k probe sets over J jobs does the
work of J passes of k, with one forward and first backward (the primal) for the whole group.
The padding rows after a job's own rows change nothing of f_j (causal attention) and carry zero
probes. Each job keeps its own :class:`~.hvp.ProductPlan` (estimators.product_plan): its probes
are drawn from the config's seed exactly as when its request runs alone, so a request's S does
not depend on its companions beyond float rounding (tests/signals/test_groups.py).

Batched: the estimators whose products run on the whole-input Hessian ("probing", "sketch").
The exact estimator (suffix operators), the Fisher surrogate and ``layer_subset`` run each
request alone (:func:`~.signal.curvature`), as do CUDA graphs: a group pass runs eager.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, vjp, vmap

from ...dtypes import accumulation_dtype, at_least_float32
from ...errors import MemoryBudgetError
from ...memory import ModelShape, probes_per_pass
from ...model.adapter import ModelAdapter
from ...windows import average_over_windows, context_windows, window_input, window_positions
from .estimators import PLANS, product_plan
from .hvp import ProductPlan
from .signal import curvature


@dataclass
class CurvatureItem:
    """One request of a group: embeds [n, d] (context + target[:-1]), positions [T] predicting
    each target, target_ids [T], n_context; on_products(k) is called with the vectors of every
    product run for it (its progress), or None."""

    embeds: torch.Tensor
    positions: torch.Tensor
    target_ids: torch.Tensor
    n_context: int
    on_products: Callable[[int], None] | None = None


@dataclass
class _Job:
    item: int
    window: int
    x: torch.Tensor          # [n_j, d], the window's input up to the target's position
    position: int            # row of x predicting the target (= n_j - 1)
    token: int
    plan: ProductPlan


def batchable(config) -> bool:
    """Whether ``config``'s curvature can share passes between requests (see the module docstring)."""
    return config.estimator in PLANS and not config.use_fisher and not config.layer_subset


def curvature_group(adapter: ModelAdapter, items: list[CurvatureItem], config) -> list[torch.Tensor]:
    """Per item, S [T, n_context] as :func:`~.signal.curvature` gives it alone, to float rounding."""
    if not batchable(config):
        return [curvature(adapter, it.embeds, it.positions.cpu(), it.target_ids, it.n_context, config, None,
                          it.on_products) for it in items]
    jobs, windows = _jobs(items, config)
    for group in _groups(adapter, jobs, config):
        _run(adapter, group, config, items)
    out = []
    for i, item in enumerate(items):
        per_window = [torch.stack([job.plan.finish() for job in jobs if job.item == i and job.window == w])
                      for w in range(len(windows[i]))]
        out.append(average_over_windows(per_window, windows[i], item.n_context).to(accumulation_dtype(item.embeds)))
    return out


def _jobs(items: list[CurvatureItem], config) -> tuple[list[_Job], list]:
    """Every (item, window, target) with its plan, in item, window, target order."""
    jobs, windows = [], []
    for i, item in enumerate(items):
        wins = context_windows(item.n_context, config.window_size, config.window_overlap)
        windows.append(wins)
        for w, win in enumerate(wins):
            x = window_input(item.embeds, item.n_context, win)
            rows = torch.arange(win.start, win.stop)
            positions = window_positions(item.positions.cpu(), item.n_context, win)
            for pos, tok in zip(positions.tolist(), item.target_ids.tolist()):
                xj = x[: pos + 1]
                jobs.append(_Job(i, w, xj, pos, int(tok), product_plan(config, tuple(xj.shape), rows, item.n_context)))
    return jobs, windows


def _groups(adapter: ModelAdapter, jobs: list[_Job], config) -> list[list[_Job]]:
    """Jobs sharing passes, longest first: a job joins a group as long as the group still runs its
    products in no more passes than its longest job would alone (the memory budget decides)."""
    shape, layers = ModelShape.of(adapter.model), len(adapter.layers)

    def passes(count: int, tokens: int) -> int:
        per_pass = probes_per_pass(shape, tokens, layers, config.memory_budget, config.max_batch)
        return -(-count // per_pass)

    groups: list[list[_Job]] = []
    for job in sorted(jobs, key=lambda j: -j.x.shape[0]):
        if groups:
            group = groups[-1]
            length, count = group[0].x.shape[0], group[0].plan.count
            alone = passes(count, length)
            try:
                if passes(count, (len(group) + 1) * length) <= alone:
                    group.append(job)
                    continue
            except MemoryBudgetError:  # the wider group does not fit at all: start a new one
                pass
        groups.append([job])
    return groups


def _run(adapter: ModelAdapter, group: list[_Job], config, items: list[CurvatureItem]) -> None:
    """Every plan of ``group`` through one group operator, in passes under the memory budget."""
    operator = GroupHessian(adapter, [j.x for j in group], [j.position for j in group], [j.token for j in group])
    count, (jobs, length, _) = group[0].plan.count, operator.shape
    per_pass = probes_per_pass(ModelShape.of(adapter.model), jobs * length, len(adapter.layers),
                               config.memory_budget, config.max_batch)
    for start in range(0, count, per_pass):
        stop = min(start + per_pass, count)
        vectors = torch.stack([_padded(j.plan.vectors_of(start, stop), length) for j in group], dim=1)
        products = operator(vectors)  # [k, J, L, d]
        for b, job in enumerate(group):
            job.plan.consume(start, stop, products[:, b, : job.x.shape[0]])
            if items[job.item].on_products is not None:
                items[job.item].on_products(stop - start)


def _padded(vectors: torch.Tensor, length: int) -> torch.Tensor:
    """[k, n, d] -> [k, length, d] with zero rows after n (padding rows get no probe)."""
    return torch.nn.functional.pad(vectors, (0, 0, 0, length - vectors.shape[1]))


class GroupHessian:
    """V [k, J, L, d] -> (H_j V_j)_j for the jobs' Hessians, one batched pass per call.

    inputs: per job x_j [n_j, d] (right-padded to L with copies of its last row, which keeps the
    padding's norms those of real rows; the padding cannot reach f_j); positions: per job the row
    predicting its target (n_j - 1); tokens: per job the target id.
    """

    def __init__(self, adapter: ModelAdapter, inputs: list[torch.Tensor], positions: list[int], tokens: list[int]):
        self.adapter = adapter
        length = max(x.shape[0] for x in inputs)
        self.h0 = torch.stack([torch.cat([x, x[-1:].expand(length - x.shape[0], -1)]) for x in inputs]).detach()
        self.rows = torch.arange(len(inputs), device=self.h0.device)
        self.positions = torch.tensor(positions, device=self.h0.device)
        self.tokens = torch.tensor(tokens, device=self.h0.device)
        self.head = adapter.model.get_output_embeddings()
        self.transform = adapter.logit_transform()
        self.applied = 0
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
