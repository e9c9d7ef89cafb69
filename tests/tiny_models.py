"""Tiny random-init models of every supported architecture (and one unsupported), for fast tests."""
from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
)

VOCAB = 64


def _configs(vocab: int):
    common = dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=2, eos_token_id=3)
    return {
        # Grouped-query attention, 4 query heads reading 2 KV heads.
        "llama": LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **common),
        # Sliding window of 3: keys further back than 3 positions are masked.
        "mistral": MistralConfig(num_attention_heads=4, num_key_value_heads=1, sliding_window=3, **common),
        # Qwen2 has q/k/v biases.
        "qwen2": Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **common),
        "phi3": Phi3Config(num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **common),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=16, n_layer=2, n_head=4, n_positions=64,
                           bos_token_id=2, eos_token_id=3),
        "gptj": GPTJConfig(vocab_size=vocab, n_embd=16, n_layer=2, n_head=4, n_positions=64, rotary_dim=4,
                           bos_token_id=2, eos_token_id=3),
    }


ARCHITECTURES = tuple(_configs(VOCAB))


def tiny_config(arch: str, vocab: int = VOCAB, **overrides):
    cfg = _configs(vocab)[arch]
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(arch: str, dtype=torch.float64, seed: int = 0, vocab: int = VOCAB, **overrides):
    """A random-init causal LM of ``arch`` with eager attention, in ``dtype``, eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab, **overrides), attn_implementation="eager")
    model = model.to(dtype).eval()
    # Random-init biases are zero; make them non-zero so that dropping one would be caught.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def unsupported_model():
    """A model family with no adapter."""
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=32, word_embed_proj_dim=16, bos_token_id=2, eos_token_id=3,
                    pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg)


WORDS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + [f"w{i}" for i in range(VOCAB - 4)]


def tiny_tokenizer():
    """A word-level tokenizer over 'w0 ... w59' (ids 4..63) with pad/unk/bos/eos specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def text(*ids: int) -> str:
    """The tiny tokenizer's text for word ids (w-numbers)."""
    return " ".join(f"w{i}" for i in ids)
