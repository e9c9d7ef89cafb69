"""The curvature's memory check before any model pass: the operators a request will build, sized
by the rule the operators use (operators.py), against ``memory_budget``.

The engine asks every signal for this check before its capture forward, so that a request whose
curvature cannot fit is refused at once with the MemoryBudgetError the curvature itself would
raise, not after the forward and the flow gate.
"""
from __future__ import annotations

from ...memory import ModelShape, check_sketch, probes_per_pass
from ...windows import context_windows, window_positions
from .cuda_graphs import length_bucket


def operator_layers(adapter, config) -> int:
    """Decoder layers a curvature pass runs through: the last ``layer_subset``, or all of them."""
    return config.layer_subset or len(adapter.layers)


def runs_graph(config, graphs) -> bool:
    """Whether the operators replay a captured CUDA graph of the whole input (the Hessian only;
    the Fisher surrogate and suffix operators run eagerly)."""
    return graphs is not None and not config.use_fisher


def operator_rows(adapter, position: int, start: int, config, graphs) -> int:
    """Rows one probe pass of the operator over rows [start, position] runs: a captured graph's
    padded length bucket (whole input only), else the rows themselves."""
    if runs_graph(config, graphs):
        return length_bucket(position + 1, adapter.max_length)
    return position + 1 - start


def first_operator_start(config, window_start: int, graphs) -> int:
    """Where the estimator's first (longest) operator of a window starts: the exact estimator over
    suffix operators starts at the window's first row (exact.py), every other operator at 0."""
    return window_start if config.estimator == "exact" and not runs_graph(config, graphs) else 0


def check_budget(adapter, request, config, graphs) -> None:
    """Raise the MemoryBudgetError the curvature would raise for ``request`` (a TokenizedRequest):
    for every window and target, in the order :func:`~.signal.curvature` builds them, the first
    operator's probe pass (one probe must fit) and, for the sketch, its matrices."""
    shape, layers = ModelShape.of(adapter.model), operator_layers(adapter, config)
    # The operator's point: the input embeddings, or the residual stream with layer_subset.
    width = shape.d_model if config.layer_subset else adapter.model.get_input_embeddings().weight.shape[-1]
    for win in context_windows(request.n_context, config.window_size, config.window_overlap):
        start = first_operator_start(config, win.start, graphs)
        for i, position in enumerate(window_positions(request.target_positions.cpu(), request.n_context, win).tolist()):
            rows = operator_rows(adapter, position, start, config, graphs)
            probes_per_pass(shape, rows, layers, config.memory_budget, config.max_batch)
            if i == 0 and config.estimator == "sketch":  # its matrices depend on the window alone
                check_sketch(config.sketch_rank, win.size, width, config.num_probes, config.memory_budget)
