"""Generation engines behind one interface: `hf` (CPU default), `vllm` (GPU), `openai` (servers)."""

from cai.generation.base import (
                                 EngineConfig,
                                 Generator,
                                 SamplingParams,
                                 engine_kwargs,
                                 make_generator,
                                 role_engine,
)

__all__ = ["EngineConfig", "Generator", "SamplingParams", "engine_kwargs", "make_generator",
           "role_engine"]
