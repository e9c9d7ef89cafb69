"""Robustness of attributions (the HETA paper's robustness studies; issue 17 §6).

One module per study: :mod:`.paraphrase`, :mod:`.noise` (embedding noise) and :mod:`.decoding`
(decoding hyperparameters), over the rank statistics of :mod:`.ranks`. ``scripts/robustness.py``
runs them on the curated set and prints their tables.
"""
from .decoding import DECODING_GRID, DECODING_SEEDS, TokenCache, decoding_sensitivity, decoding_summary
from .noise import NOISE_SCALES, embedding_noise, noise_sensitivity, perturbed_embeddings
from .paraphrase import Paraphrase, load_paraphrases, paraphrase_agreement, paraphrased, word_scores
from .ranks import attribution_change, ranks, spearman

__all__ = ["DECODING_GRID", "DECODING_SEEDS", "NOISE_SCALES", "TokenCache", "decoding_sensitivity",
           "decoding_summary", "Paraphrase", "attribution_change", "embedding_noise", "load_paraphrases",
           "noise_sensitivity", "paraphrase_agreement", "paraphrased", "perturbed_embeddings", "ranks",
           "spearman", "word_scores"]
