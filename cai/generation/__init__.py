"""Generation engines behind one interface: `hf` (CPU default), `vllm` (GPU), `openai` (servers)."""

from cai.generation.base import (
                                 EngineConfig,
                                 Generator,
                                 SamplingParams,
                                 encode_chat,
                                 engine_identity,
                                 engine_kwargs,
                                 item_seeds,
                                 make_generator,
                                 record_options,
                                 role_engine,
)

__all__ = ["EngineConfig", "Generator", "SamplingParams", "encode_chat", "engine_identity",
           "engine_kwargs", "item_seeds", "make_generator", "record_options", "role_engine"]
