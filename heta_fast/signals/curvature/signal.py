"""Curvature term S_i for every target and context token, by ``config.estimator``.

Per target and per context window (heta_fast/windows.py: the same windows as the information
term), one curvature operator (the Hessian of f w.r.t. the embeddings or the residual stream
of the last ``layer_subset`` layers, or its Fisher surrogate) is built and the configured
estimator reads the window's tokens from it; windowed scores are averaged over the windows
containing the token.
"""
from __future__ import annotations

import torch

from ...dtypes import accumulation_dtype
from ...model.adapter import ModelAdapter
from ...windows import average_over_windows, context_windows, window_input, window_positions
from .estimators import estimate, products_needed
from .operators import OperatorFactory


def products_total(n_context: int, n_targets: int, config) -> int:
    """Curvature-vector products one request costs: per window and target, the estimator's count."""
    windows = context_windows(n_context, config.window_size, config.window_overlap)
    return n_targets * sum(products_needed(config, win.size) for win in windows)


def curvature(adapter: ModelAdapter, embeds: torch.Tensor, target_positions: torch.Tensor,
              target_ids: torch.Tensor, n_context: int, config, graphs=None, on_products=None) -> torch.Tensor:
    """S for every target and context token.

    embeds [n, d] (context + target[:-1]); target_positions [T] (where each target is predicted);
    target_ids [T]; graphs: a CUDA :class:`~.cuda_graphs.GraphCache` to replay the batched HVP
    from, or None (eager); on_products(k): called after every batched product of k vectors.
    Returns [T, n_context] (float64 for float64 models, float32 otherwise), on the CPU.
    """
    windows = context_windows(n_context, config.window_size, config.window_overlap)
    per_window = []
    for win in windows:
        x = window_input(embeds, n_context, win)
        positions = window_positions(target_positions.cpu(), n_context, win)
        rows = torch.arange(win.start, win.stop)
        scores = []
        for pos, tok in zip(positions.tolist(), target_ids.tolist()):
            factory = OperatorFactory(adapter, x, pos, tok, config, graphs, on_products)
            scores.append(estimate(factory, rows, n_context, config))
        per_window.append(torch.stack(scores))
    out = average_over_windows(per_window, windows, n_context)
    return out.to(accumulation_dtype(embeds))
