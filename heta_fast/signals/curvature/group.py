"""S for several requests in shared passes (cross-request batching; the scheduler's groups).

A *job* is one (request, window, target): f_j = log p(token_j | x_j) with x_j [n_j, d] the
window's input up to the target's position. The group function F(H) = Σ_j f_j(H_j) over
H [J, L, d] (every x_j right-padded to the longest, L) has a block-diagonal Hessian: no job
reads another's rows, so the cross blocks vanish and one batched product with
V = (v_1, ..., v_J) returns (H_1 v_1, ..., H_J v_J). A pass of k probe sets over J jobs does the
work of J passes of k, with one forward and first backward (the primal) for the whole group.
The padding rows after a job's own rows change nothing of f_j (causal attention; the rotary
frequencies are settled for the jobs' own length, which a group's jobs share) and carry zero
probes. Each job keeps its own :class:`~.hvp.ProductPlan` (estimators.product_plan): its probes
are drawn from the config's seed exactly as when its request runs alone, so a request's S does
not depend on its companions beyond float rounding (tests/signals/curvature/test_group.py).

Batched: the estimators whose products run on the whole-input Hessian ("probing", "sketch").
The exact estimator (suffix operators), the Fisher surrogate and ``layer_subset`` run each
request alone (:func:`~.signal.curvature`).

The operator (group_hessian.py) runs eagerly, or on CUDA replayed from a graph captured per
(job bucket, length bucket, probe sets) (cuda_graphs.py): the group padded to a power of two of
jobs and of rows, the probes per pass then sized for the padded group under the memory budget
(a group whose padded pass does not fit runs eagerly).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...dtypes import accumulation_dtype
from ...errors import MemoryBudgetError
from ...memory import ModelShape, probes_per_pass
from ...model.adapter import ModelAdapter
from ...model.rotary import frequency_key
from ...windows import average_over_windows, context_windows, window_input, window_positions
from .cuda_graphs import GraphCache
from .estimators import PLANS, product_plan
from .group_hessian import GroupHessian
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


def curvature_group(adapter: ModelAdapter, items: list[CurvatureItem], config,
                    graphs: GraphCache | None = None) -> list[torch.Tensor]:
    """Per item, S [T, n_context] as :func:`~.signal.curvature` gives it alone, to float rounding.

    graphs: a CUDA :class:`~.cuda_graphs.GraphCache` (``graphs_for``) to replay the group passes
    and, for requests run alone, their batched HVP; None: eager."""
    if not batchable(config):
        return [curvature(adapter, it.embeds, it.positions.cpu(), it.target_ids, it.n_context, config, graphs,
                          it.on_products) for it in items]
    jobs, windows = _jobs(items, config)
    for group in _groups(adapter, jobs, config):
        _run(adapter, group, config, items, graphs)
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
    products in no more passes than its longest job would alone (the memory budget decides), and
    its length has the group's rotary frequencies (a longrope model's change with the length of
    the pass: heta_fast.model.rotary)."""
    shape, layers = ModelShape.of(adapter.model), len(adapter.layers)
    keys: dict[int, tuple] = {}

    def frequencies(job: _Job) -> tuple:
        length = job.x.shape[0]
        if length not in keys:
            keys[length] = frequency_key(adapter.model, length)
        return keys[length]

    def passes(count: int, tokens: int) -> int:
        per_pass = probes_per_pass(shape, tokens, layers, config.memory_budget, config.max_batch)
        return -(-count // per_pass)

    groups: list[list[_Job]] = []
    for job in sorted(jobs, key=lambda j: -j.x.shape[0]):
        if groups and frequencies(job) == frequencies(groups[-1][0]):
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


def _run(adapter: ModelAdapter, group: list[_Job], config, items: list[CurvatureItem],
         graphs: GraphCache | None = None) -> None:
    """Every plan of ``group`` through one group operator, in passes under the memory budget."""
    operator, per_pass = _operator(adapter, group, config, graphs)
    count, length = group[0].plan.count, operator.shape[1]
    for start in range(0, count, per_pass):
        stop = min(start + per_pass, count)
        vectors = torch.stack([_padded(j.plan.vectors_of(start, stop), length) for j in group], dim=1)
        products = operator(vectors)  # [k, J, L, d]
        for b, job in enumerate(group):
            job.plan.consume(start, stop, products[:, b, : job.x.shape[0]])
            if items[job.item].on_products is not None:
                items[job.item].on_products(stop - start)


def _operator(adapter: ModelAdapter, group: list[_Job], config, graphs: GraphCache | None):
    """(the group's operator, probe sets per pass): replayed from the CUDA graph of its padded
    shape when ``graphs`` is given and the padded pass fits the memory budget, else eager."""
    inputs, positions, tokens = [j.x for j in group], [j.position for j in group], [j.token for j in group]
    if graphs is not None:
        jobs, length = graphs.group_shape(len(inputs), max(x.shape[0] for x in inputs))
        try:
            batch = _per_pass(adapter, config, jobs * length)
        except MemoryBudgetError:
            pass  # the padding does not fit where the exact shape may: run eagerly
        else:
            return graphs.group_operator(inputs, positions, tokens, batch), batch
    operator = GroupHessian(adapter, inputs, positions, tokens)
    jobs, length, _ = operator.shape
    return operator, _per_pass(adapter, config, jobs * length)


def _per_pass(adapter: ModelAdapter, config, rows: int) -> int:
    """Probe sets per pass of a group operator over ``rows`` stacked rows (jobs × padded length)."""
    return probes_per_pass(ModelShape.of(adapter.model), rows, len(adapter.layers), config.memory_budget,
                           config.max_batch)


def _padded(vectors: torch.Tensor, length: int) -> torch.Tensor:
    """[k, n, d] -> [k, length, d] with zero rows after n (padding rows get no probe)."""
    return torch.nn.functional.pad(vectors, (0, 0, 0, length - vectors.shape[1]))
