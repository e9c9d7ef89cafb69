"""The model adapter: a loaded causal LM, its architecture's module map, and how to run it.

Every HETA signal perturbs or differentiates the input embeddings, so the model always runs
*from embeddings* (positions are added inside the model for absolute-position architectures,
so masking a token never moves a position). The signals call the model through this adapter
(:meth:`logits`, :meth:`log_probs`, :meth:`hidden_states`) and through the capture pass
(:meth:`capture`, capture.py).

What the adapter does to the model it is given, for as long as it holds it: it registers
heta's attention functions and switches the model to ``heta_eager`` (the curvature term
differentiates twice, which fused kernels cannot), puts the model in eval mode and stops
gradients to its parameters. :meth:`restore` undoes all three.

Which module map: the registered one for the model's ``model_type``, else the generic path
(architectures/generic.py: discovered from known projection layouts). A map that is not one of
heta-fast's own (generic, registered by a user, or passed as ``spec``) is accepted only after it
verifies itself on the model (architectures/verify.py); the verdict is cached per map and config.
"""
from __future__ import annotations

import torch
from torch import nn

from ..dtypes import at_least_float32
from ..errors import UnsupportedArchitectureError
from .architectures import ArchitectureSpec, head_layout_from_config, is_builtin, resolve_spec
from .architectures.base import text_config
from .attention import EAGER, register
from .cache_kwargs import cache_kwargs
from .capture import Capture, CaptureRequest, MatrixCapture, capture_matrices, run_capture
from .capture_group import run_capture_group
from .exclusive import model_lock
from .logits import LogitTransform


class ModelAdapter:
    """A causal LM with its :class:`~heta_fast.model.architectures.ArchitectureSpec`."""

    def __init__(self, model: nn.Module, spec: ArchitectureSpec | None = None):
        self.model = model
        # Held by the engine for each attribution: a pass switches state on the model (exclusive.py).
        self.lock = model_lock(model)
        self.layout = head_layout_from_config(model.config)
        self._saved = (model.config._attn_implementation, model.training,
                       [p.requires_grad for p in model.parameters()])
        self._saved_experts = _experts_implementation(model)
        register()
        model.set_attn_implementation(EAGER)
        if self._saved_experts is not None:
            # Mixture-of-experts MLPs: the plain loop over experts (the grouped kernels have no
            # float64 path and no double backward; the curvature term differentiates twice).
            model.set_experts_implementation("eager")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            self.spec = resolve_spec(self, spec)
        except Exception:
            self.restore()
            raise
        self.layers = self.spec.layers(model)

    @property
    def text_config(self):
        """The language model's config (a multimodal model's text config)."""
        return text_config(self.model.config)

    @property
    def builtin(self) -> bool:
        """Whether the module map is one of heta-fast's own (tested, not verified at load)."""
        return is_builtin(self.spec)

    def restore(self) -> None:
        """Give the model back as it was: its attention (and experts) implementation, training
        mode and parameters' ``requires_grad``."""
        implementation, training, grads = self._saved
        self.model.set_attn_implementation(implementation)
        if self._saved_experts is not None:
            self.model.set_experts_implementation(self._saved_experts)
        self.model.train(training)
        for p, flag in zip(self.model.parameters(), grads):
            p.requires_grad_(flag)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as results and settings record it ("float32", "bfloat16", ...)."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def vocab_size(self) -> int:
        """The language model's vocabulary size: every valid token id is below it."""
        return int(self.text_config.vocab_size)

    @property
    def max_length(self) -> int | None:
        """The language model's maximum number of positions (None when its config does not say)."""
        cfg = self.text_config
        for name in ("max_position_embeddings", "n_positions"):
            v = getattr(cfg, name, None)
            if v:
                return int(v)
        return None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [n] -> input embeddings [n, d_model] (detached)."""
        emb = self.model.get_input_embeddings()
        return emb(ids.to(self.device)).detach()

    def logits(self, embeds: torch.Tensor, positions: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """embeds [B, n, d] -> logits [B, P, V] at ``positions`` (all n if None). Differentiable.

        cache: optional transformers Cache holding positions [0, a) (extended in place); embeds
        then sit at positions a..a+n-1 and ``positions`` index rows of embeds.
        """
        run = cache_kwargs(self.model, cache)
        if positions is None:
            return self.model(inputs_embeds=embeds, **run).logits
        # Only the requested positions reach the LM head (a [n, V] logits block per sequence
        # would dominate the cost of short inputs with large vocabularies).
        keep = positions.to(embeds.device)
        return self.model(inputs_embeds=embeds, logits_to_keep=keep, **run).logits

    def log_probs(self, embeds: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, n, d] -> next-token log-probabilities [B, P, V] (float32 at least)."""
        return torch.log_softmax(at_least_float32(self.logits(embeds, positions)), dim=-1)

    @torch.no_grad()
    def hidden_states(self, embeds: torch.Tensor, cache, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, L, d] continuing ``cache`` (a transformers Cache of positions [0, a), extended
        in place) -> final normalised hidden states [B, L, d] at positions a..a+L-1 (LM head input).

        position_ids [B, L] override those positions (packed passes, whose segments restart at
        their own positions).
        """
        return self.final_hidden(embeds, cache, position_ids)

    def final_hidden(self, embeds: torch.Tensor, cache=None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`hidden_states`, differentiable: embeds [B, L, d] -> final normalised hidden states [B, L, d]."""
        extra = {} if position_ids is None else {"position_ids": position_ids}
        base = self.model.base_model
        return base(inputs_embeds=embeds, **cache_kwargs(base, cache), **extra).last_hidden_state

    def logit_transform(self) -> LogitTransform:
        """What the model does to h W^T + b before the softmax (scaling, final soft-capping)."""
        return LogitTransform.of(self.text_config)

    def unembedding(self, transforms: bool = False):
        """The LM head as (weight [V, d], bias [V] or None): logits = h W^T + b.

        transforms=True: (weight, bias, :class:`~.logits.LogitTransform`), the caller applies the
        transform. transforms=False: a model whose logits are transformed is refused (a caller
        that ignores the transform would compute the wrong distribution).
        """
        head = self.model.get_output_embeddings()
        weight, bias = head.weight.detach(), None if head.bias is None else head.bias.detach()
        transform = self.logit_transform()
        if transforms:
            return weight, bias, transform
        if not transform.identity:
            raise UnsupportedArchitectureError(f"{self.spec.name}: the model scales or soft-caps its final logits "
                                               f"({transform}); this caller supports a plain linear LM head only")
        return weight, bias

    def post_attention_gain(self, layer: int) -> torch.Tensor | None:
        """The post-attention norm's gain [d_model] of layer ``layer``, or None (see ArchitectureSpec)."""
        gain = self.spec.post_attention_gain(self.layers[layer])
        return None if gain is None else gain.detach()

    def out_proj(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s per-head output projection [H, dh, d_model] as the flow gate's value
        norm uses it: W_O^h, times the post-attention norm's gain per output dimension where the
        layer has such a norm (docs/method.md §1, post-attention norms)."""
        w = self.spec.out_proj(self.spec.attention(self.layers[layer]), self.layout)
        gain = self.post_attention_gain(layer)
        return w if gain is None else w * gain.to(w.dtype)

    def window(self, layer: int) -> int | None:
        """Layer ``layer``'s sliding-attention window, or None."""
        return self.spec.window(self.text_config, layer)

    def capture(self, embeds: torch.Tensor, positions: torch.Tensor, request: CaptureRequest) -> Capture:
        """The engine's single forward pass of embeds [n, d] (see :func:`~.capture.run_capture`)."""
        return run_capture(self, embeds, positions, request)

    def capture_group(self, embeds: list[torch.Tensor], positions: list[torch.Tensor],
                      request: CaptureRequest) -> list[Capture]:
        """The capture pass of B sequences embeds[b] [n_b, d] at once, targets positions[b] [T_b]
        -> per sequence its :class:`~.capture.Capture` (see :func:`~.capture_group.run_capture_group`)."""
        return run_capture_group(self, embeds, positions, request)

    def capture_matrices(self, embeds: torch.Tensor) -> MatrixCapture:
        """A materialised eager pass of embeds [n, d] (see :func:`~.capture.capture_matrices`)."""
        return capture_matrices(self, embeds)


def _experts_implementation(model: nn.Module) -> str | None:
    """The model's mixture-of-experts implementation, or None if it has none that can be set."""
    can_set = getattr(model, "_can_set_experts_implementation", None)
    if can_set is None or not can_set():
        return None
    return getattr(model.config, "_experts_implementation", None)
