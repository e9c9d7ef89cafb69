"""Baseline attribution methods and HETA ablations; each returns a :class:`heta_fast.result.Attribution`.

Every baseline is a function ``(attributor, prompt, target) -> Attribution`` over an
:class:`heta_fast.engine.Attributor` (its model adapter, tokenizer and config); prompt and target
are text or token ids, tokenised exactly as the engine tokenises them.
"""
from .gradients import input_x_gradient, saliency, target_gradients
from .heta_variants import VARIANTS, heta_variants
from .integrated_gradients import gauss_legendre, integrated_gradients, integrated_gradients_scores, path_quadrature
from .occlusion import occlusion, occlusion_scores
from .reagent import ReagentOptions, reagent
from .rollout import rollout

__all__ = ["saliency", "input_x_gradient", "integrated_gradients", "rollout", "occlusion", "reagent", "heta_variants",
           "VARIANTS", "target_gradients", "integrated_gradients_scores", "occlusion_scores",
           "gauss_legendre", "path_quadrature", "ReagentOptions"]
