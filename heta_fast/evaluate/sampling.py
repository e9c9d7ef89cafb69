"""Sampled answers under decoding hyperparameters (issue 17 §6), written out rather than ``model.generate``.

One decoding step turns the next-token logits z [V] into a token, in this order:

1. repetition penalty r (CTRL, Keskar et al. 2019, as transformers applies it): for every distinct
   token id already in the sequence (the whole context, the prompt included, and the tokens
   generated so far), z_v ← z_v / r if z_v > 0, else z_v · r (r > 1 makes repeated tokens less
   likely; r = 1 changes nothing; a zero logit stays zero);
2. greedy: when the temperature is 0 (or the setting is named ``"greedy"``) the token is the argmax
   of these logits (ties: the lowest id) and no random number is drawn; with r = 1 this is
   :func:`heta_fast.evaluate.answer.greedy_answer`'s token;
3. temperature τ > 0: z ← z / τ;
4. top-k (k ≥ 1; None or 0 = off): only the k largest logits stay (ties at the boundary: the lower
   ids), the others become −∞;
5. top-p (0 < p ≤ 1; p = 1 = off): tokens sorted by probability softmax(z), descending (ties: the
   lower id first); the smallest prefix whose cumulative probability reaches p stays, i.e. a token
   stays when the cumulative probability of the tokens before it is < p (the most likely token
   always stays); the others become −∞;
6. sample: π = softmax(z) over what stays (float64); one u ~ U[0, 1) from the generator; the token
   is the first one, in the order of step 5, at which the cumulative probability of π exceeds u.

The generator is a CPU ``torch.Generator`` seeded with ``seed · 1_000_003 + crc32(key)`` (``key``:
the record id), so each record draws independently of the others and the same (seed, key) always
draws the same answer. The draw does not depend on the setting: every setting of one (seed, key)
uses the same uniforms u (common random numbers), so two settings differ only through their
distributions.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..errors import ConfigError
from ..model.cache_kwargs import cache_kwargs
from ..model.exclusive import holding_the_model
from .forward import as_model

_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")


@dataclass(frozen=True)
class Decoding:
    """One decoding setting. The default is plain sampling (τ = 1, no top-k, top-p 1, no penalty)."""

    name: str = "sample"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k
                                       or self.top_k < 0):
            raise ConfigError(f"top_k must be an integer >= 0 (0 or None: off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.name == "greedy"

    @classmethod
    def parse(cls, spec: str) -> "Decoding":
        """``"greedy"``, ``"sample"`` or ``"temperature=0.7"``, ``"top_p=0.9,top_k=50"`` (around the base)."""
        spec = spec.strip()
        if spec in ("greedy", "sample"):
            return cls(spec, temperature=0.0 if spec == "greedy" else 1.0)
        values: dict = {}
        for part in spec.split(","):
            key, _, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if key not in _FIELDS or not value.strip():
                raise ConfigError(f"decoding setting {spec!r}: expected name=value with a name in {', '.join(_FIELDS)}")
            values[key] = int(value) if key == "top_k" else float(value)
        return cls(spec, **values)

    def to_dict(self) -> dict:
        return {"name": self.name, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repetition_penalty": self.repetition_penalty}


def generator_for(seed: int, key: str = "") -> torch.Generator:
    """The CPU generator of one (seed, record): seeded with seed · 1_000_003 + crc32(key)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(str(key).encode("utf-8")))


def penalised(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [V] -> float64 [V] with the repetition penalty on every distinct id of ``seen`` (step 1)."""
    z = logits.detach().double().cpu().clone()
    if penalty != 1.0 and seen.numel():
        ids = torch.unique(seen.cpu().long())
        v = z[ids]
        z[ids] = torch.where(v > 0, v / penalty, v * penalty)
    return z


def _order(z: torch.Tensor) -> torch.Tensor:
    """Ids by descending value, ties by ascending id."""
    return torch.sort(z, descending=True, stable=True).indices


def sampling_probs(logits: torch.Tensor, seen: torch.Tensor, decoding: Decoding) -> torch.Tensor:
    """The distribution a step samples from (steps 1 and 3–5), float64 [V]; greedy: one-hot on the argmax."""
    z = penalised(logits, seen, decoding.repetition_penalty)
    if decoding.greedy:
        out = torch.zeros_like(z)
        out[int(_order(z)[0])] = 1.0
        return out
    z = z / decoding.temperature
    if decoding.top_k:
        k = min(int(decoding.top_k), z.numel())
        drop = _order(z)[k:]
        z[drop] = float("-inf")
    if decoding.top_p < 1.0:
        order = _order(z)
        p = torch.softmax(z[order], dim=-1)
        before = torch.cumsum(p, dim=-1) - p
        z[order[before >= decoding.top_p]] = float("-inf")
    return torch.softmax(z, dim=-1)


def sample_token(logits: torch.Tensor, seen: torch.Tensor, decoding: Decoding,
                 generator: torch.Generator | None) -> int:
    """One decoding step (module docstring): greedy draws no random number, sampling one u ~ U[0, 1)."""
    probs = sampling_probs(logits, seen, decoding)
    order = _order(probs)
    if decoding.greedy:
        return int(order[0])
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    cum = torch.cumsum(probs[order], dim=-1)
    idx = int(torch.searchsorted(cum, torch.tensor([u], dtype=torch.float64), right=True)[0])
    # u beyond the last cumulative value (rounding): the last token with positive probability
    idx = min(idx, int((probs[order] > 0).sum()) - 1)
    return int(order[idx])


@dataclass(frozen=True)
class SampledAnswer:
    """ids [k] (1 <= k <= max_new_tokens; the stop token, when reached, is the last one);
    first_probs [V]: the model's float64 next-token distribution at the end of the context;
    first_sampling_probs [V]: the distribution the first token was drawn from (after steps 1–5)."""

    ids: torch.Tensor
    first_probs: torch.Tensor
    first_sampling_probs: torch.Tensor


@holding_the_model
@torch.no_grad()
def sampled_answer(model, context_ids: torch.Tensor, max_new_tokens: int, stop: set[int], *,
                   temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
                   repetition_penalty: float = 1.0, seed: int = 0, key: str = "",
                   name: str = "sample") -> SampledAnswer:
    """A continuation of context_ids [n] decoded with these hyperparameters (module docstring):
    at most ``max_new_tokens`` tokens, stopping after the first token in ``stop``; the random
    numbers come from :func:`generator_for` (seed, key). Temperature 0 or ``name="greedy"``: argmax.

    Written out with a KV cache rather than ``model.generate``, so no generation-config default
    (a repetition penalty, top-k 50, ...) changes the draw.
    """
    decoding = Decoding(name, temperature, top_p, top_k, repetition_penalty)
    return decode(model, context_ids, max_new_tokens, stop, decoding, generator_for(seed, key))


@holding_the_model
@torch.no_grad()
def decode(model, context_ids: torch.Tensor, max_new_tokens: int, stop: set[int], decoding: Decoding,
           generator: torch.Generator | None) -> SampledAnswer:
    """:func:`sampled_answer` with a :class:`Decoding` and a generator of your own."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    lm = as_model(model)
    device = lm.get_input_embeddings().weight.device
    cache = cache_kwargs(lm, DynamicCache())  # the model extends this cache in place
    logits = lm(input_ids=context_ids[None].to(device), logits_to_keep=1, **cache).logits[0, -1]
    first_probs = torch.softmax(logits.double(), dim=-1).cpu()
    first_sampling = sampling_probs(logits, context_ids, decoding)
    seen = context_ids.cpu().long()
    generated: list[int] = []
    while True:
        token = sample_token(logits, seen, decoding, generator)
        generated.append(token)
        seen = torch.cat([seen, torch.tensor([token])])
        if token in stop or len(generated) >= max_new_tokens:
            break
        logits = lm(input_ids=torch.tensor([[token]], device=device), logits_to_keep=1, **cache).logits[0, -1]
    return SampledAnswer(torch.tensor(generated, dtype=torch.long), first_probs, first_sampling)


__all__ = ["Decoding", "SampledAnswer", "decode", "generator_for", "penalised", "sample_token", "sampled_answer",
           "sampling_probs"]
