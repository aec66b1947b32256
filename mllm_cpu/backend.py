"""What solving and chatting need from a model: a local `Engine` or a remote OpenAI-compatible endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mllm_cpu.engine import Generation
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.prompt_format import Message
from mllm_cpu.sampling import SamplingOptions


class Backend(Protocol):
    """Generates a streamed reply to a conversation; implemented by `Engine` and `EndpointBackend`."""

    def chat(
        self,
        messages: list[Message],
        options: SamplingOptions | None = None,
        on_text: Callable[[str], None] | None = None,
        *,
        reuse_prefix: bool = True,
    ) -> Generation:
        """The assistant's reply, calling `on_text` with each new piece of text."""
        ...

    def default_options(self) -> SamplingOptions:
        """The sampling options used when none are given."""
        ...

    def identity(self) -> ModelIdentity:
        """Which model (and, for an endpoint, which server) produces the replies."""
        ...
