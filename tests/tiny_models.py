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


def _family_configs(vocab: int):
    """The families of issue 12 (kept apart from ARCHITECTURES, whose digests are recorded)."""
    from transformers import (
        Gemma2Config,
        Gemma3Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPTNeoXConfig,
        GraniteConfig,
        MixtralConfig,
        Olmo2Config,
        Qwen3Config,
        Qwen3MoeConfig,
        SiglipVisionConfig,
        SmolLM3Config,
    )

    common = dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=2, eos_token_id=3,
                  pad_token_id=0, num_attention_heads=4, num_key_value_heads=2)
    # Gemma-2/3: half the layers sliding (window 3), small caps so that soft-capping changes the numbers.
    gemma2 = dict(common, head_dim=4, query_pre_attn_scalar=4, sliding_window=3,
                  layer_types=["sliding_attention", "full_attention"], initializer_range=0.5)
    gemma3 = dict(gemma2, rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                           "full_attention": {"rope_type": "default", "rope_theta": 1e6}})
    llama3_rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    return {
        "llama3": LlamaConfig(rope_parameters=llama3_rope, **common),
        "mixtral": MixtralConfig(num_local_experts=4, num_experts_per_tok=2, sliding_window=4, **common),
        "qwen3": Qwen3Config(head_dim=4, **common),
        "qwen3_moe": Qwen3MoeConfig(head_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                    decoder_sparse_step=1, **common),
        # Layer 1 runs without rotary.
        "smollm3": SmolLM3Config(no_rope_layers=[1, 0], **common),
        "granite": GraniteConfig(attention_multiplier=0.3, residual_multiplier=0.5, embedding_multiplier=3.0,
                                 logits_scaling=4.0, **common),
        "olmo2": Olmo2Config(**common),
        "gpt_neox": GPTNeoXConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=64, attention_bias=True,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": 0.5},
                                  bos_token_id=2, eos_token_id=3, tie_word_embeddings=False),
        "gemma": GemmaConfig(head_dim=4, **common),
        "gemma2": Gemma2Config(attn_logit_softcapping=0.5, final_logit_softcapping=2.0, **gemma2),
        "gemma3_text": Gemma3TextConfig(**gemma3),
        "gemma3": Gemma3Config(text_config=Gemma3TextConfig(**gemma3).to_dict(),
                               vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32,
                                                                num_hidden_layers=1, num_attention_heads=2,
                                                                image_size=28, patch_size=14).to_dict(),
                               mm_tokens_per_image=4, tie_word_embeddings=False),
    }


ARCHITECTURES = tuple(_configs(VOCAB))
FAMILIES = tuple(_family_configs(VOCAB))


def tiny_config(arch: str, vocab: int = VOCAB, **overrides):
    configs = _configs(vocab) if arch in ARCHITECTURES else _family_configs(vocab)
    cfg = configs[arch]
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
            elif arch in FAMILIES and "norm" in name:
                # Norm gains start at 1 (or 0 for Gemma's 1 + w): perturb them so that a dropped or
                # misread gain (the post-attention norms) would be caught.
                p.add_(torch.randn_like(p) * 0.2)
    return model


def unsupported_model():
    """A family heta-fast cannot read: BLOOM computes its attention (ALiBi) in its own code, not
    through transformers' attention interface, so neither a map nor the generic path can record it."""
    from transformers import BloomConfig

    torch.manual_seed(0)
    cfg = BloomConfig(vocab_size=VOCAB, hidden_size=16, n_layer=2, n_head=4, bos_token_id=2, eos_token_id=3,
                      pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg)


def generic_model(dtype=torch.float64):
    """A family with no module map of its own that the generic path reads (OPT: separate
    q/k/v/out_proj under model.decoder.layers, learned absolute positions)."""
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
                    max_position_embeddings=64, word_embed_proj_dim=16, bos_token_id=2, eos_token_id=3,
                    pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


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
