"""The three estimators of S behind one signature, chosen by ``HETAConfig.estimator``.

Every estimator takes an operator factory (factory(start) -> (operator V [B, n, d] -> C V over
rows [start, n), probes per call); see operators.py), the rows of h to attribute and the config,
draws its random vectors from ``config.seed`` alone (two runs give the same numbers) and returns
S for those rows. The probe of token i is row i of the draw ``rademacher_probes(n_context, m, d,
seed)`` (probes.py) whatever the window, so a token keeps its probes across windows and estimators.
"""
from __future__ import annotations

from typing import Callable

import torch

from ...memory import check_sketch
from .exact import exact_block_hutchinson, exact_by_suffix, suffix_group_size
from .hvp import ProductPlan
from .probes import rademacher_probes
from .probing import probing_plan, sign_patterns
from .sketch import nystrom_plan, sketch_matrix


def _exact(factory, rows, n_context, config):
    d = factory.x.shape[1]
    probes = rademacher_probes(n_context, config.num_probes, d, config.seed)[rows]
    if factory.suffixes:
        group = suffix_group_size(factory.position + 1, config.num_probes)
        return exact_by_suffix(factory, rows, probes, group)
    operator, chunk = factory(0)
    return exact_block_hutchinson(operator, rows, probes, chunk)


def _probing_plan(shape, rows, n_context, config) -> ProductPlan:
    repeats, patterns = config.probing_repeats, config.probing_patterns
    probes = rademacher_probes(n_context, repeats, shape[1], config.seed)[rows]
    signs = sign_patterns(len(rows), repeats, patterns, config.seed)
    return probing_plan(shape, rows, probes, signs)


def _sketch_plan(shape, rows, n_context, config) -> ProductPlan:
    d = shape[1]
    check_sketch(config.sketch_rank, len(rows), d, config.num_probes, config.memory_budget)
    probes = rademacher_probes(n_context, config.num_probes, d, config.seed)[rows]
    omega = sketch_matrix(len(rows), d, config.sketch_rank, config.seed)
    return nystrom_plan(shape, rows, probes, omega)


# Estimators whose products all run on the operator over the whole input: their plans can share
# the passes of several operators (group.py). The exact estimator runs suffix operators instead.
PLANS: dict[str, Callable] = {"probing": _probing_plan, "sketch": _sketch_plan}


def product_plan(config, shape: tuple[int, int], rows: torch.Tensor, n_context: int) -> ProductPlan:
    """The products ``config.estimator`` (one of :data:`PLANS`) needs for ``rows`` [R] of an
    operator on vectors of ``shape`` (n, d); the plan's finish() returns S [R] (float64)."""
    return PLANS[config.estimator](shape, rows, n_context, config)


def _by_plan(factory, rows, n_context, config):
    operator, chunk = factory(0)
    return product_plan(config, operator.shape, rows, n_context).run(operator, chunk)


ESTIMATORS: dict[str, Callable] = {"exact": _exact, "probing": _by_plan, "sketch": _by_plan}


def estimate(factory, rows: torch.Tensor, n_context: int, config) -> torch.Tensor:
    """S for ``rows`` [R] (long, ascending positions of h) by ``config.estimator``; returns [R] float64."""
    return ESTIMATORS[config.estimator](factory, rows, n_context, config)


def products_needed(config, num_rows: int) -> int:
    """How many curvature-vector products an estimator spends on ``num_rows`` tokens (one target)."""
    return {
        "exact": num_rows * config.num_probes,
        "probing": config.probing_repeats * config.probing_patterns,
        "sketch": config.sketch_rank,
    }[config.estimator]
