"""The chat: conversation logic called directly, then the REPL driven through a terminal as a user would."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pexpect
import pytest

from helpers.cli_runner import MLLM_CPU, run_cli
from helpers.forcing import forcing_options
from mllm_cpu.conversation import HELP_TEXT, Conversation, run_command
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.tasks import get_preset


@pytest.fixture(scope="module")
def engine(synthetic_tiny_gguf: Path) -> Engine:
    """One thread: the tiny model gains nothing from more, and stays fast when another job holds the cores."""
    return Engine(synthetic_tiny_gguf, threads=1)


@pytest.fixture(scope="module")
def small_engine(synthetic_tiny_gguf: Path) -> Engine:
    return Engine(synthetic_tiny_gguf, n_ctx=160, threads=1)


def test_two_turns_go_through_the_chat_template(engine: Engine) -> None:
    conversation = Conversation(engine, forcing_options(engine, "Four."), "Be brief.")
    first = conversation.reply("What is 2 + 2?")
    assert first.generation.text == "Four." and first.dropped_turns == 0
    conversation.options = forcing_options(engine, "Six.")
    conversation.reply("And 3 + 3?")
    assert [m["role"] for m in conversation.messages()] == ["system", "user", "assistant", "user", "assistant"]
    prompt = engine.render_chat(conversation.messages()[:-1])
    assert "Be brief.<|eot_id|>" in prompt
    assert "What is 2 + 2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nFour.<|eot_id|>" in prompt
    assert prompt.endswith("And 3 + 3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert conversation.last is not None and conversation.last.text == "Six."


def test_oldest_turns_are_dropped_to_fit_the_context(small_engine: Engine) -> None:
    conversation = Conversation(small_engine, SamplingOptions(seed=1, max_tokens=24), "Keep me.")
    dropped = []
    for turn in range(8):
        reply = conversation.reply(f"Message number {turn}, with a few more words to take up room.")
        dropped.append(reply.dropped_turns)
        assert reply.generation.prompt_tokens + reply.generation.generated_tokens <= small_engine.n_ctx
    assert sum(dropped) > 0
    assert conversation.messages()[0] == {"role": "system", "content": "Keep me."}
    assert conversation.turns[0]["role"] == "user"
    assert "Message number 7" in conversation.turns[-2]["content"]
    assert "Message number 0" not in json.dumps(conversation.turns)


def test_a_message_larger_than_the_context_is_refused(small_engine: Engine) -> None:
    conversation = Conversation(small_engine, SamplingOptions(seed=1, max_tokens=8))
    conversation.reply("short")
    with pytest.raises(InputError, match="the context holds 160"):
        conversation.reply("word " * 400)
    assert len(conversation.turns) == 0 or conversation.turns[-1]["role"] == "assistant"


def test_ctrl_c_keeps_the_partial_reply(engine: Engine) -> None:
    conversation = Conversation(engine, SamplingOptions(seed=1, max_tokens=500))
    seen: list[str] = []

    def interrupt_after_three(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            raise KeyboardInterrupt

    reply = conversation.reply("Tell me a long story.", interrupt_after_three)
    assert reply.generation.stop_reason == "interrupted"
    assert conversation.turns[-1] == {"role": "assistant", "content": reply.generation.text}
    assert reply.generation.text.startswith("".join(seen))


def test_slash_commands(engine: Engine, tmp_path: Path) -> None:
    conversation = Conversation(engine, forcing_options(engine, "Hi."))
    assert run_command(conversation, "/help").message == HELP_TEXT
    assert run_command(conversation, "/stats").message == "no reply yet"
    conversation.reply("Hello")
    tokens = len(engine.llama.tokenize(b"Hi.", add_bos=False, special=False))
    assert run_command(conversation, "/stats").message.startswith(f"last reply: {tokens} tokens in ")
    assert run_command(conversation, "/system You are terse.").message == "system prompt set"
    assert conversation.system_prompt == "You are terse."
    assert "You are terse." in run_command(conversation, "/system").message
    run_command(conversation, "/task Math")
    assert conversation.system_prompt == get_preset("math").system_prompt
    saved = tmp_path / "talk.json"
    assert run_command(conversation, f"/save {saved}").message == f"saved 2 messages to {saved}"
    assert json.loads(saved.read_text())["messages"][1] == {"role": "assistant", "content": "Hi."}
    assert run_command(conversation, "/reset").message == "conversation cleared"
    assert conversation.turns == [] and conversation.system_prompt == get_preset("math").system_prompt
    run_command(conversation, "/system none")
    run_command(conversation, f"/load {saved}")
    assert conversation.system_prompt == get_preset("math").system_prompt and len(conversation.turns) == 2
    assert run_command(conversation, "/quit").quit


def test_load_accepts_a_list_of_messages(engine: Engine, tmp_path: Path) -> None:
    conversation = Conversation(engine, SamplingOptions())
    path = tmp_path / "openai.json"
    path.write_text(json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]))
    conversation.load(path)
    assert conversation.messages() == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("/task java", "unknown task 'java'"),
        ("/task", "/task needs a name"),
        ("/save", "/save needs a file name"),
        ("/load /nonexistent/x.json", "no such file"),
        ("/frobnicate", "unknown command /frobnicate"),
    ],
)
def test_bad_commands_raise_input_errors(engine: Engine, command: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        run_command(Conversation(engine, SamplingOptions()), command)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a JSON conversation"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "role 'robot'"),
        ('{"messages": [{"role": "user"}]}', "needs a string"),
        ('{"messages": 3}', "expected"),
    ],
)
def test_bad_conversation_files(engine: Engine, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        Conversation(engine, SamplingOptions()).load(path)


def _spawn_chat(model: Path, *flags: str) -> pexpect.spawn:
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    arguments = ["chat", "--model", str(model), "--threads", "1", *flags]
    child = pexpect.spawn(MLLM_CPU, arguments, env=env, encoding="utf-8", timeout=60, dimensions=(50, 200))
    child.expect(">>>")
    return child


def _exit_with_ctrl_d(child: pexpect.spawn) -> int | None:
    """Press Ctrl-D at the prompt (already shown) and return the exit status."""
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_repl_two_turns_stats_reset_and_ctrl_d(synthetic_tiny_gguf: Path, isolated_store: Path) -> None:
    child = _spawn_chat(synthetic_tiny_gguf, "--max-tokens", "12", "--seed", "1")
    child.sendline("Hello there")
    child.expect("reply cut at --max-tokens 12")
    child.expect(">>>")
    child.sendline("And a second question")
    child.expect("reply cut at --max-tokens 12")
    child.expect(">>>")
    child.sendline("/stats")
    child.expect(r"last reply: 12 tokens in [0-9.]+ s, [0-9.]+ tokens/s")
    child.expect(r"context: (\d+)/4096 tokens")
    assert int(child.match.group(1)) > 40
    child.expect(">>>")
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.expect(">>>")
    assert _exit_with_ctrl_d(child) == 0
    assert "Hello there" in (isolated_store / "chat_history").read_text()


def test_repl_ctrl_c_stops_a_reply_and_keeps_the_chat(synthetic_tiny_gguf: Path) -> None:
    child = _spawn_chat(synthetic_tiny_gguf, "--max-tokens", "100000", "--seed", "2")
    child.sendline("Write a very long essay")
    child.expect("essay")
    time.sleep(1.5)
    child.sendintr()
    child.expect("stopped; the partial reply is kept")
    child.expect(">>>")
    child.sendline("/stats")
    child.expect(r"last reply: (\d+) tokens .* \(stopped by interrupted\)")
    assert 0 < int(child.match.group(1)) < 4000
    child.expect(">>>")
    assert _exit_with_ctrl_d(child) == 0


def test_repl_context_overflow_drops_old_turns(synthetic_tiny_gguf: Path) -> None:
    child = _spawn_chat(synthetic_tiny_gguf, "--ctx", "128", "--max-tokens", "24", "--seed", "3")
    notices = 0
    for turn in range(6):
        child.sendline(f"Turn {turn}: tell me something new")
        if child.expect(["dropped the \\d+ oldest turns?", "reply cut at"]) == 0:
            notices += 1
        child.expect(">>>")
    assert notices > 0
    assert _exit_with_ctrl_d(child) == 0


def test_piped_input_answers_each_line_and_exits(synthetic_tiny_gguf: Path) -> None:
    result = run_cli(
        "chat",
        "--model",
        str(synthetic_tiny_gguf),
        "--threads",
        "1",
        "--max-tokens",
        "6",
        "--seed",
        "1",
        input_text="first question\n\n/stats\nsecond question\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 2
    assert "last reply: 6 tokens" in result.stderr
    assert result.stderr.count("reply cut at --max-tokens 6") == 2


def test_chat_without_a_model_says_how_to_get_one() -> None:
    result = run_cli("chat", input_text="hi\n")
    assert result.returncode == 2
    assert "mllm-cpu convert --synthetic 140m --store" in result.stderr
    assert result.stdout == ""
