"""The reference engine: HETA written plainly, readable before fast (the oracle).

Every fast path is tested against these functions. They run on the CPU, in float64 when the
model and inputs are float64, and they materialise everything (attention matrices, full
vocabulary distributions, one HVP at a time). Exact semantics: docs/method.md.

Notation: the model input is a single sequence of n embeddings X [n, d]. The first
``n_context`` positions are the context (the prompt); a target token x_t sits at input
position ``p_t + 1`` and is predicted from position ``p_t``.
"""
from __future__ import annotations

import torch

from .model.adapter import ModelAdapter


# ----------------------------------------------------------------------------- flow gate M_T
def value_norms_reference(values: torch.Tensor, out_proj: torch.Tensor,
                          gain: torch.Tensor | None = None) -> torch.Tensor:
    """‖(v_i W_O^h) ⊙ g‖₁ for every head and token.

    values:   [Hkv, n, dh]  values of the normalised attention input (bias included)
    out_proj: [H, dh, d_model]
    gain:     [d_model] the gain g of a norm applied to the attention output before the residual
              add (Gemma-2/3, OLMo-2; docs/method.md §1), or None (g = 1)
    returns:  [H, n]; query head h reads KV head h // (H // Hkv)
    """
    num_heads, num_kv = out_proj.shape[0], values.shape[0]
    group = num_heads // num_kv
    per_head = values.repeat_interleave(group, dim=0)  # [H, n, dh]
    contribution = torch.einsum("hnk,hkd->hnd", per_head, out_proj)  # [H, n, d_model]
    if gain is not None:
        contribution = contribution * gain.to(contribution.dtype)
    return contribution.abs().sum(-1)


def flow_gate_reference(
    attentions: list[torch.Tensor],
    value_norms: list[torch.Tensor],
    target_positions: torch.Tensor,
    n_context: int,
) -> torch.Tensor:
    """Semantic flow gate M_T for each target (materialised attention rollout).

    attentions:       L tensors [H, n, n], attention probabilities (row = query), bottom layer first
    value_norms:      L tensors [H, n]
    target_positions: [T] positions p_t that predict each target
    returns:          [T, n_context], each row on the simplex (all zeros if no flow reaches the context)

    r^(L) = one-hot(p_t); for l = L..1: Φ^(l,h) = r^(l) A^(l,h); M += Σ_h Φ^(l,h) ⊙ vn^(l,h);
    r^(l-1) = r^(l) Â^(l) with Â = ½ mean_h A^(l,h) + ½ I, row-normalised.
    """
    dtype = attentions[0].dtype
    rows = []
    for p in target_positions.tolist():
        m = torch.zeros(attentions[0].shape[-1], dtype=dtype)
        for r, attn, vn in _rollout(attentions, p, value_norms):
            phi = torch.einsum("j,hji->hi", r, attn)  # [H, n]
            m = m + (phi * vn.to(dtype)).sum(0)
        rows.append(_simplex(m[:n_context]))
    return torch.stack(rows)


def _rollout(attentions: list[torch.Tensor], p: int, per_layer: list | None = None):
    """(r^(l), A^(l) [H, n, n], per_layer[l]) from the top layer down, for the target at position
    p: r^(L) = one-hot(p), r^(l-1) = r^(l) Â^(l), Â = ½ mean_h A^(l,h) + ½ I row-normalised."""
    n, dtype = attentions[0].shape[-1], attentions[0].dtype
    r = torch.zeros(n, dtype=dtype)
    r[p] = 1.0
    extra = reversed(per_layer) if per_layer is not None else [None] * len(attentions)
    for attn, item in zip(reversed(attentions), extra):
        attn = attn.to(dtype)
        yield r, attn, item
        a_hat = 0.5 * attn.mean(0) + 0.5 * torch.eye(n, dtype=dtype)
        r = r @ (a_hat / a_hat.sum(-1, keepdim=True))


def received_share_reference(attentions: list[torch.Tensor], target_positions: torch.Tensor) -> torch.Tensor:
    """[T, n]: the attention share each position receives along the rollout to each target,
    averaged over layers: (1/L) Σ_l r^(l) Ā^(l), with r^(l) the rollout row entering layer l
    from the top (r^(L) = one-hot(p_t)) and Ā^(l) the head-mean attention (materialised)."""
    rows = []
    for p in target_positions.tolist():
        share = sum(r @ attn.mean(0) for r, attn, _ in _rollout(attentions, p))
        rows.append(share / len(attentions))
    return torch.stack(rows)


# ----------------------------------------------------------------------------- curvature S_i
def rademacher_probes(n_context: int, num_probes: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """The block-restricted probes of the curvature estimator: [n_context, m, d] of ±1.

    Probe (i, k) is zero outside token i's embedding block; only its block is stored. One
    seeded draw, in this order, so that every implementation uses identical probes.
    """
    g = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, (n_context, num_probes, d), generator=g)
    return (signs * 2 - 1).to(dtype)


def target_log_prob(adapter: ModelAdapter, embeds: torch.Tensor, position: int, token_id: int) -> torch.Tensor:
    """f(X) = log p(x_T = token_id | X[:position+1]); embeds [n, d] -> scalar."""
    logp = adapter.log_probs(embeds[None, : position + 1], torch.tensor([position]))
    return logp[0, 0, token_id]


def hvp_reference(adapter: ModelAdapter, embeds: torch.Tensor, position: int, token_id: int,
                  vector: torch.Tensor) -> torch.Tensor:
    """H v by Pearlmutter's trick (double backward), H = ∇²_X f(X). embeds, vector [n, d] -> [n, d]."""
    x = embeds.detach().clone().requires_grad_(True)
    f = target_log_prob(adapter, x, position, token_id)
    (grad,) = torch.autograd.grad(f, x, create_graph=True)
    (hv,) = torch.autograd.grad((grad * vector).sum(), x)
    return hv


def curvature_reference(adapter: ModelAdapter, embeds: torch.Tensor, position: int, token_id: int,
                        n_context: int, probes: torch.Tensor) -> torch.Tensor:
    """S_i = (1/m) Σ_k ‖Π_i H (Π_i r_k)‖₁, one HVP per (i, k), sequentially.

    embeds: [n, d]; probes: [n_context, m, d] (see :func:`rademacher_probes`); returns [n_context].
    """
    x = embeds[: position + 1]
    m = probes.shape[1]
    out = torch.zeros(n_context, dtype=x.dtype)
    for i in range(n_context):
        total = torch.zeros((), dtype=x.dtype)
        for k in range(m):
            v = torch.zeros_like(x)
            v[i] = probes[i, k].to(x.dtype)
            hv = hvp_reference(adapter, x, position, token_id, v)
            total = total + hv[i].abs().sum()
        out[i] = total / m
    return out


# ----------------------------------------------------------------------------- information I_i
def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis from log-probabilities; terms with p = 0 contribute 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def information_reference(adapter: ModelAdapter, embeds: torch.Tensor, target_positions: torch.Tensor,
                          n_context: int, mask_vectors: torch.Tensor) -> torch.Tensor:
    """I_i = KL(P_orig ‖ P_masked^(i)) at every target position; one full forward per masked token.

    embeds: [n, d]; target_positions: [T]; mask_vectors: [n_context, d] (row i replaces x_i)
    returns [T, n_context]
    """
    with torch.no_grad():
        orig = adapter.log_probs(embeds[None], target_positions)[0]  # [T, V]
        cols = []
        for i in range(n_context):
            masked = embeds.clone()
            masked[i] = mask_vectors[i].to(embeds.dtype)
            logq = adapter.log_probs(masked[None], target_positions)[0]
            cols.append(kl_divergence(orig, logq))
    return torch.stack(cols, dim=1)


def information_span_reference(adapter: ModelAdapter, embeds: torch.Tensor, target_positions: torch.Tensor,
                               n_context: int, mask_vectors: torch.Tensor, span: int) -> torch.Tensor:
    """The span estimate of I by its definition (docs/method.md §3): one full forward per masked
    token i in which every decoder layer's input rows outside R_i = [i, i + span) ∪ [p_1 - span, n)
    (p_1 the first target position) are replaced by the unmasked pass's rows, so only the rows of
    R_i see the mask. Forward pre-hooks on the layers, not the engine's packed attention.

    embeds: [n, d]; target_positions: [T]; mask_vectors: [n_context, d]; returns [T, n_context]
    """
    n = embeds.shape[0]
    clean: dict[int, torch.Tensor] = {}
    frozen: list[torch.Tensor | None] = [None]  # [n] bool: rows read unmasked, or None (record)

    def hook(index):
        def replace(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if frozen[0] is None:
                clean[index] = hidden.detach().clone()
                return None
            hidden = torch.where(frozen[0][None, :, None], clean[index], hidden)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}
        return replace

    handles = [layer.register_forward_pre_hook(hook(j), with_kwargs=True) for j, layer in enumerate(adapter.layers)]
    resume = max(int(target_positions.min()) - span, 0)
    rows = torch.arange(n)
    try:
        with torch.no_grad():
            orig = adapter.log_probs(embeds[None], target_positions)[0]  # records every layer's clean input
            cols = []
            for i in range(n_context):
                frozen[0] = (rows >= i + span) & (rows < resume)
                masked = embeds.clone()
                masked[i] = mask_vectors[i].to(embeds.dtype)
                logq = adapter.log_probs(masked[None], target_positions)[0]
                cols.append(torch.where(target_positions >= i, kl_divergence(orig, logq), 0.0))
    finally:
        for h in handles:
            h.remove()
    return torch.stack(cols, dim=1)


# ----------------------------------------------------------------------------- combination
def combine(flow: torch.Tensor | None, curvature: torch.Tensor | None, information: torch.Tensor | None,
            beta: float, gamma: float) -> torch.Tensor:
    """Attr = M ⊙ (β S + γ I), using only the components that were computed.

    Without the flow gate the score is ungated (β S + γ I); with the gate alone it is M.
    """
    inner = None
    if curvature is not None:
        inner = beta * curvature
    if information is not None:
        inner = gamma * information if inner is None else inner + gamma * information
    if flow is None:
        return inner
    return flow if inner is None else flow * inner


def attribute_reference(adapter: ModelAdapter, embeds: torch.Tensor, target_positions: torch.Tensor,
                        target_ids: torch.Tensor, n_context: int, mask_vectors: torch.Tensor,
                        num_probes: int = 10, seed: int = 0, beta: float = 0.5, gamma: float = 0.5) -> dict:
    """The whole of HETA by the definitions, one piece at a time (the end-to-end oracle).

    embeds [n, d] (context + target[:-1]); target_positions [T]; target_ids [T];
    mask_vectors [n_context, d]. Materialised attention for the flow gate, the sequential
    Hutchinson loop (m = ``num_probes``, probes from ``seed``) and the one-pass-per-token
    information loop. Returns {"scores", "flow", "curvature", "information"}, each [T, n_context].
    """
    cap = adapter.capture_matrices(embeds)
    norms = [value_norms_reference(v, w, g) for v, w, g in zip(cap.values, cap.out_proj, cap.post_gain)]
    flow = flow_gate_reference(cap.attentions, norms, target_positions, n_context)
    probes = rademacher_probes(n_context, num_probes, embeds.shape[-1], seed)
    curv = torch.stack([curvature_reference(adapter, embeds, int(p), int(t), n_context, probes)
                        for p, t in zip(target_positions, target_ids)])
    info = information_reference(adapter, embeds, target_positions, n_context, mask_vectors)
    return {"scores": combine(flow, curv, info, beta, gamma), "flow": flow, "curvature": curv, "information": info}


def _simplex(v: torch.Tensor) -> torch.Tensor:
    total = v.sum()
    return v / total if total > 0 else torch.zeros_like(v)
