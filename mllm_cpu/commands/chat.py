"""`mllm-cpu chat`: an interactive multi-turn chat, or one reply per line of piped input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mllm_cpu.budget import ThinkingBudget
from mllm_cpu.commands.console import err, out, terminal_safe
from mllm_cpu.commands.options import OPTIONS, Flags, with_options
from mllm_cpu.commands.stream_display import TerminalStream
from mllm_cpu.conversation import MESSAGE_LIMIT, Conversation, Reply, run_command
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.user_files import decode_utf8, limited_lines
from mllm_cpu.engine import StopReason
from mllm_cpu.prompt_format import unicode_text
from mllm_cpu.store import store_home
from mllm_cpu.tasks import get_preset

HISTORY_FILE = "chat_history"
PROMPT = ">>> "
STDIN = Path("stdin")
"""How errors name piped input (`stdin:3: not UTF-8 text ...`)."""


@with_options(*(name for name in OPTIONS if name != "parallel"))
def chat(
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    task: Annotated[
        str | None, typer.Option(help="Start with a task's system prompt: math, python, cpp or science.")
    ] = None,
    *,
    flags: Flags,
) -> None:
    """Chat with the model. Type /help for commands; Ctrl-C stops a reply, Ctrl-D leaves.

    With piped input, each line is a message (or a slash command); replies go to stdout. A line
    that is not UTF-8 text, or longer than 1 MiB, ends the chat with an error (exit 2).
    """
    if system is not None:
        unicode_text(system, "--system")
    if system is not None and task is not None:
        raise InputError("--system and --task both set the system prompt; give one of them")
    system_prompt = get_preset(task).system_prompt if task is not None else system
    budgets = flags.budgets()
    if len(budgets) > 1:
        raise InputError("chat takes one --budget (a sweep needs solve --file PROBLEMS.jsonl)")
    preset = get_preset(task or "math")
    engine = flags.load_backend()
    options = flags.sampling(engine)
    budget = ThinkingBudget(budgets[0], flags.answer_tokens or preset.answer_tokens) if budgets else None
    conversation = Conversation(engine, options, system_prompt, budget=budget, preset=preset)
    if sys.stdin.isatty() and sys.stdout.isatty():
        _interactive(conversation)
    else:
        _piped(conversation)


def _interactive(conversation: Conversation) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    home = store_home()
    home.mkdir(parents=True, exist_ok=True)
    session: PromptSession[str] = PromptSession(history=FileHistory(str(home / HISTORY_FILE)))
    err.print(
        f"[dim]{escape(terminal_safe(_model_label(conversation)))} · /help for commands · Ctrl-C stops a reply · "
        "Ctrl-D leaves[/dim]",
        highlight=False,
        soft_wrap=True,
    )
    while True:
        try:
            line = session.prompt(PROMPT)
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        try:
            if _handle_line(conversation, line, interactive=True):
                return
        except KeyboardInterrupt:
            err.print("[yellow]stopped[/yellow]", highlight=False, soft_wrap=True)


def _model_label(conversation: Conversation) -> str:
    """The model's name and family with its context, or with its server for an endpoint."""
    model = conversation.engine.identity()
    return model.label if model.endpoint else f"{model.label} · context {conversation.context_size} tokens"


def _piped(conversation: Conversation) -> None:
    for number, data in limited_lines(sys.stdin.buffer, STDIN, MESSAGE_LIMIT, "one chat message"):
        if _handle_line(conversation, decode_utf8(data, STDIN, number), interactive=False):
            return


def _handle_line(conversation: Conversation, line: str, *, interactive: bool) -> bool:
    """Answer one message or run one command; True when the chat should end."""
    text = line.strip()
    if not text:
        return False
    if text.startswith("/"):
        try:
            result = run_command(conversation, unicode_text(text, "the command"))
        except InputError as error:
            err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
            return False
        err.print(escape(result.message), highlight=False, soft_wrap=True)
        return result.quit
    stream = TerminalStream(out)
    try:
        reply = conversation.reply(unicode_text(line.rstrip("\r\n"), "the message"), stream)
    except InputError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return False
    finally:
        stream.finish()
    _show_notices(reply, conversation)
    if reply.generation.stop_reason == StopReason.INTERRUPTED and not interactive:
        raise KeyboardInterrupt
    return False


def _show_notices(reply: Reply, conversation: Conversation) -> None:
    if reply.dropped_turns:
        turns = "turn" if reply.dropped_turns == 1 else "turns"
        err.print(
            f"[yellow]the conversation outgrew the {conversation.context_size}-token context: "
            f"dropped the {reply.dropped_turns} oldest {turns}[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
    reason = reply.generation.stop_reason
    if conversation.forced and conversation.budget is not None:
        err.print(
            f"[yellow]reasoning cut at --budget {conversation.budget.tokens} tokens; the answer was forced[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
    if reason == StopReason.INTERRUPTED:
        err.print("[yellow]stopped; the partial reply is kept[/yellow]", highlight=False, soft_wrap=True)
    elif reason == StopReason.LENGTH:
        err.print(
            f"[yellow]reply cut at --max-tokens {conversation.options.max_tokens}[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
    elif reason == "context":
        err.print("[yellow]reply cut at the end of the context[/yellow]", highlight=False, soft_wrap=True)
