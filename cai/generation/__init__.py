"""Generation engines behind one interface: `hf` (CPU default), `vllm` (GPU), `openai` (servers);
`Role`, the model a job runs and how, and `make_generator`, which builds its engine."""

from cai.generation.base import Generator, SamplingParams, encode_chat, item_seeds
from cai.generation.roles import (
    Role,
    beside,
    engine_identity,
    engine_kwargs,
    main_role,
    make_generator,
    record_options,
    second_role,
)

__all__ = ["Generator", "Role", "SamplingParams", "beside", "encode_chat", "engine_identity",
           "engine_kwargs", "item_seeds", "main_role", "make_generator", "record_options",
           "second_role"]
