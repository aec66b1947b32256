"""A multi-turn conversation: history, fitting it into the context, and the chat's slash commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_cpu.backend import Backend
from mllm_cpu.budget import ThinkingBudget, generate_with_budget
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.user_files import read_text
from mllm_cpu.core.values import MIB
from mllm_cpu.engine import Engine, Generation, Message
from mllm_cpu.prompt_format import unicode_text
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.tasks import TASK_NAMES, TaskPreset, get_preset

CONVERSATION_FORMAT = "mllm-cpu-conversation"
CONVERSATION_FILE_LIMIT = 16 * MIB
"""The largest conversation file /load reads (old turns are dropped to fit the context, so it may be long)."""
MESSAGE_LIMIT = 1 * MIB
"""The longest message chat takes from piped input (a line): far more text than any context holds."""
_ROLES = ("user", "assistant")

HELP_TEXT = f"""\
/help           this list
/reset          forget the conversation (the system prompt stays)
/system TEXT    set the system prompt (no TEXT: show it; /system none: remove it)
/task NAME      use a task's system prompt: {", ".join(TASK_NAMES)}
/save FILE      save the conversation as JSON
/load FILE      load a conversation saved with /save
/stats          tokens and speed of the last reply
/quit           leave (Ctrl-D does too)
Ctrl-C stops a reply and keeps what was generated."""


@dataclass(frozen=True)
class Reply:
    """The model's answer to one user message, and how many old turns were dropped to fit it."""

    generation: Generation
    dropped_turns: int


@dataclass(frozen=True)
class CommandResult:
    """What a slash command has to say, and whether the chat should end."""

    message: str
    quit: bool = False


class Conversation:
    """The system prompt and the user/assistant turns so far, rendered by the model's chat template.

    With a local Engine the oldest turns are dropped to fit the context; an endpoint's server
    keeps its own context (a conversation that outgrows it gets the server's error; /reset).
    """

    def __init__(
        self,
        engine: Backend,
        options: SamplingOptions,
        system_prompt: str | None = None,
        *,
        budget: ThinkingBudget | None = None,
        preset: TaskPreset | None = None,
    ) -> None:
        """`budget` caps each reply's reasoning and forces an answer in `preset`'s form (math's by default)."""
        self.engine = engine
        self.options = options
        self.system_prompt = system_prompt
        self.budget = budget
        self.preset = preset or get_preset("math")
        self.forced = False
        """Whether the last reply's answer was forced by the budget."""
        self.turns: list[Message] = []
        self.last: Generation | None = None

    def messages(self) -> list[Message]:
        """The whole conversation as chat messages, the system prompt first."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.turns

    @property
    def context_size(self) -> int | None:
        """The local model's context in tokens; None for an endpoint."""
        return self.engine.n_ctx if isinstance(self.engine, Engine) else None

    def _local(self) -> Engine:
        if not isinstance(self.engine, Engine):
            raise TypeError("only a local model's context is fitted here")
        return self.engine

    def reply_budget(self) -> int:
        """Tokens kept free for the reply when old turns must be dropped."""
        return max(1, min(self.options.max_tokens, self._local().n_ctx // 4))

    def prompt_tokens(self) -> list[int]:
        """The conversation rendered and tokenized, ending with the assistant's turn header."""
        engine = self._local()
        return engine.tokenize(engine.render_chat(self.messages()))

    def _prompt_within(self, tokens: int) -> list[int] | None:
        """The prompt's tokens when it has at most `tokens`, else None; a text that surely has
        more (by its length) is not tokenized, so a huge message costs no more than the context."""
        engine = self._local()
        text = engine.render_chat(self.messages())
        if engine.prompt_format.surely_longer(text, tokens):
            return None
        ids = engine.tokenize(text)
        return ids if len(ids) <= tokens else None

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> Reply:
        """Add a user message and generate the assistant's reply (kept even when Ctrl-C cut it short)."""
        self.turns.append({"role": "user", "content": text})
        self.forced = False
        try:
            if isinstance(self.engine, Engine):
                tokens, dropped = self._fit_context()
                if self.budget is not None:
                    budgeted = generate_with_budget(
                        self.engine, tokens, self.preset, self.budget, self.options, on_text
                    )
                    generation, self.forced = budgeted.generation, budgeted.forced
                else:
                    generation = self.engine.generate(tokens, self.options, on_text)
            else:
                dropped = 0
                generation = self.engine.chat(self.messages(), self.options, on_text)
        except BaseException:
            self.turns.pop()
            raise
        self.turns.append({"role": "assistant", "content": generation.text})
        self.last = generation
        return Reply(generation, dropped)

    def _fit_context(self) -> tuple[list[int], int]:
        """Drop the oldest turns until the prompt leaves room for a reply; the system prompt stays."""
        dropped = 0
        n_ctx = self._local().n_ctx
        tokens = self._prompt_within(n_ctx - self.reply_budget())
        while tokens is None and len(self.turns) > 1:
            del self.turns[0]
            if self.turns and self.turns[0]["role"] == "assistant":
                del self.turns[0]
            dropped += 1
            tokens = self._prompt_within(n_ctx - self.reply_budget())
        if tokens is None:
            tokens = self._prompt_within(n_ctx - 1)
        if tokens is None:
            raise InputError(
                f"the message needs more than {n_ctx - 1} tokens with the system prompt; "
                f"the context holds {n_ctx} (use a larger --ctx)"
            )
        return tokens, dropped

    def reset(self) -> None:
        """Forget every turn; the system prompt stays."""
        self.turns.clear()
        self.last = None

    def to_json(self) -> dict[str, Any]:
        """The conversation in the format /save writes."""
        return {"format": CONVERSATION_FORMAT, "system": self.system_prompt, "messages": list(self.turns)}

    def save(self, path: Path) -> None:
        """Write the conversation to a JSON file."""
        try:
            path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as error:
            raise InputError(f"{path}: cannot write: {error.strerror}") from None

    def load(self, path: Path) -> None:
        """Replace the conversation with one from a JSON file (/save's format or a list of messages)."""
        text = read_text(path, CONVERSATION_FILE_LIMIT, "a conversation")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"{path}: not a JSON conversation") from None
        except RecursionError:
            raise InputError(f"{path}: not a JSON conversation (nested too deeply)") from None
        system, turns = _parse_conversation(data, path)
        self.system_prompt = system
        self.turns = turns
        self.last = None


def _parse_conversation(data: Any, path: Path) -> tuple[str | None, list[Message]]:
    if isinstance(data, dict):
        system = data.get("system")
        messages = data.get("messages")
    else:
        system, messages = None, data
    if not isinstance(messages, list) or (system is not None and not isinstance(system, str)):
        raise InputError(f'{path}: expected {{"system": ..., "messages": [...]}} or a list of messages')
    if system is not None:
        unicode_text(system, f"{path}: the system prompt")
    turns: list[Message] = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InputError(f'{path}: message {number} needs a string "content"')
        unicode_text(message["content"], f"{path}: message {number}")
        role = message.get("role")
        if role == "system":
            system = message["content"]
        elif role in _ROLES:
            turns.append({"role": role, "content": message["content"]})
        else:
            raise InputError(f"{path}: message {number} has role {role!r}; expected system, user or assistant")
    return system, turns


def generation_stats(generation: Generation | None, n_ctx: int | None) -> str:
    """One paragraph on the last reply: tokens, speed, prompt time and context use (when `n_ctx` is known)."""
    if generation is None:
        return "no reply yet"
    used = generation.prompt_tokens + generation.generated_tokens
    return (
        f"last reply: {generation.generated_tokens} tokens in {generation.generation_seconds:.2f} s, "
        f"{generation.tokens_per_second:.1f} tokens/s (stopped by {generation.stop_reason}); "
        f"prompt: {generation.prompt_tokens} tokens in {generation.prompt_seconds:.2f} s"
        + (f"; context: {used}/{n_ctx} tokens" if n_ctx else "")
    )


def run_command(conversation: Conversation, line: str) -> CommandResult:
    """Carry out a slash command; a bad argument raises InputError."""
    name, _, argument = line.strip().partition(" ")
    argument = argument.strip()
    command = name.lower()
    if command in ("/help", "/?"):
        return CommandResult(HELP_TEXT)
    if command in ("/quit", "/exit", "/bye"):
        return CommandResult("bye", quit=True)
    if command == "/reset":
        conversation.reset()
        return CommandResult("conversation cleared")
    if command == "/stats":
        return CommandResult(generation_stats(conversation.last, conversation.context_size))
    if command == "/system":
        if not argument:
            return CommandResult(
                f"system prompt: {conversation.system_prompt!r}" if conversation.system_prompt else "no system prompt"
            )
        conversation.system_prompt = None if argument.lower() == "none" else argument
        return CommandResult("system prompt removed" if conversation.system_prompt is None else "system prompt set")
    if command == "/task":
        if not argument:
            raise InputError(f"/task needs a name: {', '.join(TASK_NAMES)}")
        preset = get_preset(argument)
        conversation.system_prompt = preset.system_prompt
        return CommandResult(f"system prompt set for the {preset.name} task")
    if command in ("/save", "/load"):
        if not argument:
            raise InputError(f"{command} needs a file name")
        path = Path(argument).expanduser()
        if command == "/save":
            conversation.save(path)
            return CommandResult(f"saved {len(conversation.turns)} messages to {path}")
        conversation.load(path)
        return CommandResult(f"loaded {len(conversation.turns)} messages from {path}")
    raise InputError(f"unknown command {name}; /help lists the commands")
