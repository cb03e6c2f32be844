"""A tiny random Llama with a real tokenizer, for the tests, the benchmarks and the GPU check.

Two layers of width 64: it loads and trains in seconds and learns nothing. Every code path that
takes a model (generation, scoring, LoRA, QLoRA, export) runs on it as on a real one.
"""

from __future__ import annotations

from pathlib import Path


def write_tiny_model(tokenizer, out: Path, max_positions: int = 4096, seed: int = 0) -> Path:
    """Save a seeded random Llama sized to `tokenizer`'s vocabulary, and the tokenizer, in
    `out`; returns `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)
