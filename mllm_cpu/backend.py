"""What solving and chatting need from a model: a local `Engine`, a remote OpenAI-compatible endpoint, or
a local model's runner decoding several replies together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from mllm_cpu.budget import BudgetedGeneration, Detokenize, ThinkingBudget
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Generation
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.model_file import ModelFile
from mllm_cpu.prompt_format import Message
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.tasks import TaskPreset


class ReplyFailed(InputError):
    """A reply the model's server or runner could not give (it failed or crashed); a later request may succeed."""


class Backend(Protocol):
    """Generates a streamed reply to a conversation; implemented by `Engine`, `EndpointBackend` and
    `RunnerBackend`."""

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


@runtime_checkable
class BatchedBackend(Backend, Protocol):
    """A local model in a runner process that decodes several replies together (`solve --file --parallel`)."""

    model: ModelFile
    detokenize: Detokenize

    def chat_with_budget(
        self,
        messages: list[Message],
        preset: TaskPreset,
        budget: ThinkingBudget,
        options: SamplingOptions,
        on_text: Callable[[str], None] | None = None,
    ) -> BudgetedGeneration:
        """The reply with its reasoning cut after `budget.tokens` tokens and `preset`'s answer forced."""
        ...

    def close(self) -> None:
        """Stop the runner."""
        ...
