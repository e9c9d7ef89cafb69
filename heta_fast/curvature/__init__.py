"""The curvature term S: batched curvature-vector products and three estimators.

- target.py: f = log p(x_T | x_<T) as a pure function of the embeddings or of the residual stream
- hvp.py / fisher.py: batched operators V -> H V (torch.func) and V -> G V (Gauss-Newton/Fisher)
- exact.py / probing.py / sketch.py: the estimators; estimators.py picks one by config
- budget.py: probes per batched pass under the memory budget
- cuda_graphs.py: CUDA-only capture and replay of the batched HVP
The engine's entry point is :func:`heta_fast.signals.curvature.curvature`.
"""
from .estimators import ESTIMATORS, estimate, products_needed
from .fisher import FisherOperator
from .hvp import HessianOperator
from .target import TargetFunction

__all__ = ["ESTIMATORS", "FisherOperator", "HessianOperator", "TargetFunction", "estimate", "products_needed"]
