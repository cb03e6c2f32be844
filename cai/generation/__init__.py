"""Generation engines behind one interface: `hf` (CPU default), `vllm` (GPU), `openai` (servers)."""

from cai.generation.base import Generator, SamplingParams, make_generator

__all__ = ["Generator", "SamplingParams", "make_generator"]
