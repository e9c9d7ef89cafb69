"""A module map proves itself on the model before heta-fast reads the model through it.

On a short fixed input (:data:`N_TOKENS` tokens drawn from a fixed seed, fewer when the model
allows fewer positions; at least :data:`MIN_TOKENS`) the map must give, for every decoder layer:

1. head counts: the attention function sees the config's query heads, the recorded keys have
   its key/value heads and head size, the map's values and per-head output projection have
   the shapes [Hkv, n, dh] and [H, dh, d_model];
2. the attention module's real output, rebuilt from heta's eager probabilities, the map's
   values and per-head W_O with the head mapping (Σ_h A_h v_κ(h) W_O^h), up to one row vector
   shared by every position (the output bias, which belongs to no token);
3. the probabilities the flow gate recomputes from the recorded q, k, row log-sum-exp, scale,
   soft-cap and the map's window, equal to the eager ones;
4. what reaches the residual stream (layer output − layer input in a pass with every MLP's
   output silenced) is, at every position j, c_j · g ⊙ (attention output)_j with g the map's
   post-attention gain (1 without one) and c_j one scalar per position (1 without a norm,
   1/rms for a post-attention RMSNorm): the linearisation the flow gate's value norm uses
   (docs/method.md §1) holds.

Each comparison is relative to the largest magnitude involved, at a tolerance derived from the
model's dtype (:func:`tolerance`). The verdict is cached per (map, architecture, config): a
second model of the same configuration costs nothing.
"""
from __future__ import annotations

import torch

from ...errors import UnsupportedArchitectureError
from .base import ArchitectureSpec, text_config

N_TOKENS = 12
# Below two tokens no token attends to another: nothing of the map would be checked.
MIN_TOKENS = 2
_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 4e-2}
# The module whose output is the MLP's contribution (OPT's is its second linear layer, fc2).
_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn", "fc2")
_VERDICTS: dict[tuple, str | None] = {}


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the checks for a model in ``dtype``."""
    return _TOLERANCE.get(dtype, 4e-2)


def verify_cached(adapter, spec: ArchitectureSpec) -> None:
    """:func:`verify`, once per (map, architecture, config); raises the cached refusal again."""
    config = adapter.model.config
    # The map itself (not its id, which a collected map's successor could reuse) keys the verdict.
    key = (spec, type(adapter.model).__name__, config.to_json_string(use_diff=False), str(adapter.dtype))
    if key not in _VERDICTS:
        try:
            verify(adapter, spec)
            _VERDICTS[key] = None
        except UnsupportedArchitectureError as err:
            _VERDICTS[key] = str(err)
    if _VERDICTS[key] is not None:
        raise UnsupportedArchitectureError(_VERDICTS[key])


def verify(adapter, spec: ArchitectureSpec) -> None:
    """Raise :class:`UnsupportedArchitectureError` naming the architecture, the first layer and
    the quantity that does not match, unless ``spec`` reads ``adapter.model`` exactly."""
    from ..capture import CaptureRequest, capture_matrices, run_capture  # the capture imports this package

    model = adapter.model
    arch = getattr(model.config, "model_type", type(model).__name__)

    def refuse(layer, quantity: str, detail: str, verb: str = "does not match"):
        where = "" if layer is None else f"layer {layer}: "
        raise UnsupportedArchitectureError(
            f"architecture {arch!r}, module map {spec.name!r}: {where}{quantity} {verb} ({detail}). "
            f"heta-fast reads a model only through a module map that rebuilds every attention output; describe "
            f"this one with heta_fast.model.ArchitectureSpec and register it with "
            f"heta_fast.model.register_architecture (README, 'Supported architectures')")

    saved_spec, saved_layers = getattr(adapter, "spec", None), getattr(adapter, "layers", None)
    adapter.spec = spec
    try:
        try:
            adapter.layers = spec.layers(model)
        except (AttributeError, TypeError) as err:
            refuse(None, "finding the decoder layers", f"{type(err).__name__}: {err}", verb="failed")
        _check(adapter, spec, refuse, capture_matrices, run_capture, CaptureRequest)
    finally:
        adapter.spec, adapter.layers = saved_spec, saved_layers


def _check(adapter, spec, refuse, capture_matrices, run_capture, CaptureRequest) -> None:
    model, layout = adapter.model, adapter.layout
    expected_layers = getattr(text_config(model.config), "num_hidden_layers", None)
    if expected_layers is not None and len(adapter.layers) != expected_layers:
        refuse(None, "the number of decoder layers",
               f"the map gives {len(adapter.layers)}, the config {expected_layers}")
    n = token_count(adapter)
    if n < MIN_TOKENS:
        refuse(None, "the number of positions the model allows", f"{n}; the verification needs {MIN_TOKENS}",
               verb="is too small")
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(0))
    embeds = adapter.embed(ids)
    tol = tolerance(adapter.dtype)
    residual = _ResidualProbe(adapter)
    rec = _run(refuse, lambda: run_capture(adapter, embeds, torch.tensor([n - 1]), CaptureRequest(attention=True)))
    for layer, r in enumerate(rec.layers):
        for quantity, got, want in (("query heads", r.q.shape[0], layout.num_heads),
                                    ("key/value heads", r.k.shape[0], layout.num_kv_heads),
                                    ("head size", r.q.shape[-1], layout.head_dim)):
            if got != want:
                refuse(layer, quantity, f"the model's attention sees {got}, the config gives {want}")
    cap = _run(refuse, lambda: capture_matrices(adapter, embeds))
    _run(refuse, lambda: residual.run(embeds))
    for layer in range(len(adapter.layers)):
        a, v, w = cap.attentions[layer], cap.values[layer], cap.out_proj[layer]
        r = rec.layers[layer]
        for quantity, got, want in (("values shape", tuple(v.shape), (layout.num_kv_heads, n, layout.head_dim)),
                                    ("per-head output projection shape", tuple(w.shape),
                                     (layout.num_heads, layout.head_dim, layout.d_model))):
            if got != want:
                refuse(layer, quantity, f"the map gives {got}, the config {want}")
        rebuilt = sum(a[h] @ v[layout.kv_head_of(h)] @ w[h] for h in range(layout.num_heads))
        diff = cap.outputs[layer].to(rebuilt.dtype) - rebuilt
        error = _relative(diff - diff[:1], cap.outputs[layer])
        if error > tol:
            refuse(layer, "the attention output rebuilt from probabilities, values and per-head W_O",
                   f"relative error {error:.2e} > {tol:.0e}")
        recomputed = _recompute(r, rec.windows[layer])
        error = _relative(recomputed - a.to(recomputed.dtype), a)
        if error > tol:
            refuse(layer, "the attention probabilities recomputed from the recorded q, k and row log-sum-exp",
                   f"relative error {error:.2e} > {tol:.0e}; window {rec.windows[layer]}")
        error = residual.error(layer, cap.post_gain[layer])
        if error is None:
            refuse(layer, f"the MLP (a module named one of {', '.join(_MLP_NAMES)})",
                   "without it the path of the attention output to the residual stream cannot be checked",
                   verb="is not found")
        if error > tol:
            refuse(layer, "the attention output as it reaches the residual stream (a norm or multiplier after "
                   "attention that the map's post_attention_gain does not describe?)",
                   f"relative error {error:.2e} > {tol:.0e}")


def token_count(adapter) -> int:
    """Tokens of the verification input: :data:`N_TOKENS`, or the positions the model allows."""
    limit = adapter.max_length
    return N_TOKENS if limit is None else min(N_TOKENS, limit)


def _run(refuse, step):
    """``step()``, with its failure turned into a refusal."""
    try:
        return step()
    except UnsupportedArchitectureError as err:
        refuse(None, "the attention path", str(err), verb="failed")
    except (AttributeError, TypeError, RuntimeError, KeyError, ValueError, IndexError) as err:
        refuse(None, "reading the attention through the map", f"{type(err).__name__}: {err}", verb="failed")


def _relative(diff: torch.Tensor, reference: torch.Tensor) -> float:
    scale = float(reference.abs().max())
    return float(diff.abs().max()) / (scale if scale > 0 else 1.0)


def _recompute(record, window: int | None) -> torch.Tensor:
    """A [H, n, n] from a capture record, as the flow gate recomputes it (plain torch)."""
    q, k = record.q.double(), record.k.double()
    group = q.shape[0] // k.shape[0]
    s = record.scale * q @ k.repeat_interleave(group, dim=0).transpose(-1, -2)
    if record.softcap is not None:
        s = record.softcap * torch.tanh(s / record.softcap)
    n = q.shape[1]
    j, i = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    visible = (i <= j) if window is None else (i <= j) & (j - i < window)
    a = torch.exp(s - record.lse.double()[..., None])
    return torch.where(visible, a, torch.zeros_like(a))


class _ResidualProbe:
    """One extra forward pass with every MLP's output replaced by zeros, recording per decoder
    layer its input, its output and its attention module's output: with the MLPs silenced
    (a post-MLP norm or multiplier of zero is zero), output − input is what attention adds."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.inputs, self.outputs, self.attn = {}, {}, {}

    @torch.no_grad()
    def run(self, embeds: torch.Tensor) -> None:
        handles = []
        try:
            for idx, layer in enumerate(self.adapter.layers):
                mlp = next((getattr(layer, name) for name in _MLP_NAMES if isinstance(getattr(layer, name, None),
                                                                                       torch.nn.Module)), None)
                if mlp is None:
                    continue

                def pre(module, args, kwargs, idx=idx):
                    self.inputs[idx] = (args[0] if args else kwargs["hidden_states"])[0]

                def post(module, args, out, idx=idx):
                    self.outputs[idx] = _first(out)[0]

                def attn(module, args, out, idx=idx):
                    self.attn[idx] = _first(out)[0]

                handles += [layer.register_forward_pre_hook(pre, with_kwargs=True), layer.register_forward_hook(post),
                            self.adapter.spec.attention(layer).register_forward_hook(attn),
                            mlp.register_forward_hook(_silence)]
            self.adapter.model(inputs_embeds=embeds[None], use_cache=False)
        finally:
            for h in handles:
                h.remove()

    def error(self, layer: int, gain: torch.Tensor | None) -> float | None:
        """Relative error of (output − input) against c_j · gain ⊙ attention output with the best
        scalar c_j per position j (c_j = 1 without a gain); None when the layer has no MLP this
        probe knows (the map is then refused: the check cannot be made)."""
        if layer not in self.attn:
            return None
        rest = (self.outputs[layer] - self.inputs[layer]).double()
        a = self.attn[layer].double()
        if gain is None:
            return _relative(rest - a, rest)
        a = a * gain.double()
        c = (rest * a).sum(-1, keepdim=True) / (a * a).sum(-1, keepdim=True).clamp_min(1e-300)
        return _relative(rest - c * a, rest)


def _silence(module, args, out):
    """Forward hook: the module's output as zeros (same structure)."""
    if isinstance(out, tuple):
        return (torch.zeros_like(out[0]), *out[1:])
    return torch.zeros_like(out)


def _first(out):
    return out[0] if isinstance(out, tuple) else out
