"""A local model that solves several problems at once: the batched engine in its runner process, as a Backend.

`solve --file --parallel N` on a local model solves through a `RunnerBackend`: each problem's
thread calls `chat` (or `chat_with_budget`), which sends one sequence to the runner
(`mllm_cpu.runner`) and waits for its events, so up to N problems decode together in one
llama.cpp context. Prompts are rendered and tokenized here, on a vocabulary-only copy of the
model. When the runner crashes, the replies in flight raise `ReplyFailed` (the batch leaves those
problems for a rerun) and the runner starts again for the next ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mllm_cpu.api_routes import served_model
from mllm_cpu.backend import ReplyFailed
from mllm_cpu.batched import BatchRequest, Failed, Finished, Piece
from mllm_cpu.budget import BudgetedGeneration, ThinkingBudget
from mllm_cpu.engine import Generation
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.prompt_format import Message
from mllm_cpu.runner import Log, Runner, RunnerSpec, RunnerUnavailable
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.tasks import TaskPreset


class RunnerBackend:
    """A local model file served by a runner process that decodes up to `parallel` replies together."""

    def __init__(
        self, path: Path, parallel: int, *, n_ctx: int | None = None, threads: int | None = None, log: Log
    ) -> None:
        self.served = served_model(path, n_ctx)
        self.model = self.served.model
        self.detokenize = self.served.vocab.detokenize
        self._runner = Runner(RunnerSpec(path, parallel, self.served.n_ctx, threads), path.stem, log)
        self._runner.start()

    def chat(
        self,
        messages: list[Message],
        options: SamplingOptions | None = None,
        on_text: Callable[[str], None] | None = None,
        *,
        reuse_prefix: bool = True,
    ) -> Generation:
        """The assistant's reply. The engine shares a prompt's evaluated prefix between sequences by
        itself, so `reuse_prefix` changes nothing here."""
        return self._reply(self._request(messages, options or self.default_options()), on_text).generation

    def chat_with_budget(
        self,
        messages: list[Message],
        preset: TaskPreset,
        budget: ThinkingBudget,
        options: SamplingOptions,
        on_text: Callable[[str], None] | None = None,
    ) -> BudgetedGeneration:
        """The reply with its reasoning cut after `budget.tokens` tokens and `preset`'s answer forced."""
        request = self._request(messages, options, budget=budget, preset=preset)
        budgeted = self._reply(request, on_text).budgeted
        assert budgeted is not None, "a budgeted sequence finishes with its split"
        return budgeted

    def default_options(self) -> SamplingOptions:
        """The sampling defaults, with the file's `general.sampling.*` values applied."""
        return self.served.defaults

    def identity(self) -> ModelIdentity:
        """The file's name, size and content fingerprint (as for `Engine`, so records are comparable)."""
        return self.model.identity

    def close(self) -> None:
        """Stop the runner (replies in flight end as failed)."""
        self._runner.close()

    def _request(
        self,
        messages: list[Message],
        options: SamplingOptions,
        *,
        budget: ThinkingBudget | None = None,
        preset: TaskPreset | None = None,
    ) -> BatchRequest:
        prompt_format = self.served.prompt_format
        tokens = prompt_format.tokenize(prompt_format.render(messages), limit=self.served.n_ctx)
        return BatchRequest(tokens, options, prompt_format.stop_texts, budget=budget, preset=preset)

    def _reply(self, request: BatchRequest, on_text: Callable[[str], None] | None) -> Finished:
        """Send one sequence and relay its text until it finishes; ReplyFailed when the runner failed it."""
        try:
            stream = self._runner.submit(request)
        except RunnerUnavailable as error:
            raise ReplyFailed(str(error)) from None
        try:
            for event in stream:
                if isinstance(event, Piece):
                    if event.text and on_text is not None:
                        on_text(event.text)
                elif isinstance(event, Failed):
                    raise ReplyFailed(event.reason)
                elif isinstance(event, Finished):
                    return event
        finally:
            stream.close()
        raise ReplyFailed("the model runner ended the reply without finishing it")
