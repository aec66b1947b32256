"""Hostile prompts and chat templates: files whose template is not text, not Jinja or never ends,
absurd context lengths, tokens that are not UTF-8, prompts far larger than the context, and text
that is not valid Unicode. Each is one `error:` line (exit 2) in bounded time and memory, or is
handled (bench measures a file whose special tokens are not UTF-8).

Hostile files are the small converted model with its metadata rewritten (`helpers.small_gguf.rewrite_gguf`);
memory-bound cases run the real CLI in a child whose address space is limited.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path

import gguf
import llama_cpp
import pytest

from helpers.cli_runner import MLLM_CPU, error_lines, run_cli
from helpers.small_gguf import rewrite_gguf
from mllm_cpu.conversation import CONVERSATION_FILE_LIMIT, Conversation, run_command
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine, PromptTooLong
from mllm_cpu.prompt_format import TEMPLATE_STEPS, PromptFormat, TemplateLimit, load_vocabulary, unicode_text
from mllm_cpu.sampling import SamplingOptions

CHILD_MEMORY = 1 << 30
"""Address space for the CLI in a child: the nested-loop template took 3.5 GB and a 20 MB question
2.3 GB before they were bounded; a reply on the tiny model needs a few hundred MB."""
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}"
CT = gguf_keys.CHAT_TEMPLATE


def _limited_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def _run_limited(*args: str, input_text: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`mllm-cpu ARGS` in a child process whose address space is CHILD_MEMORY."""
    return subprocess.run(
        [MLLM_CPU, *args],
        capture_output=True,
        text=True,
        input=input_text,
        timeout=timeout,
        preexec_fn=_limited_child,
    )


def _only_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused run writes, with exit 2 and nothing on stdout."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in error_lines(result) if not line.startswith("note: ")]  # the kernel choice, once
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert result.stdout.strip() == ""
    return lines[0]


def _template_not_text(good: Path, folder: Path) -> Path:
    untyped = rewrite_gguf(good, folder / "untyped.gguf", {CT: None})
    return rewrite_gguf(untyped, folder / "not-text.gguf", {CT: 5})


HOSTILE_FILES = {
    "template not text": (_template_not_text, "tokenizer.chat_template is int, not text"),
    "template not Jinja": (
        lambda good, folder: rewrite_gguf(good, folder / "bad-jinja.gguf", {CT: "{% for x in %}{{ x }}"}),
        "tokenizer.chat_template is not valid Jinja: Expected an expression, got 'end of statement block' (line 1)",
    ),
    "named template not Jinja": (
        lambda good, folder: rewrite_gguf(good, folder / "bad-tool.gguf", {f"{CT}.tool_use": "{% if %}"}),
        "tokenizer.chat_template.tool_use is not valid Jinja: ",
    ),
    "context_length 2^32-1": (
        lambda good, folder: rewrite_gguf(good, folder / "ctx.gguf", {"qwen3.context_length": 2**32 - 1}),
        "context_length 4,294,967,295 is more than 16,777,216 tokens",
    ),
}
COMMANDS = {
    "solve": lambda path: ("solve", "--model", str(path), "--threads", "1", "What is 1 plus 2?"),
    "chat": lambda path: ("chat", "--model", str(path), "--threads", "1"),
    "bench": lambda path: ("bench", str(path), "-p", "16", "-n", "4", "-r", "1"),
    "serve": lambda path: ("serve", "--model", str(path), "--port", "0"),
}
LOAD_CASES = [
    (case, command)
    for case in HOSTILE_FILES
    for command in COMMANDS
    if not (case.startswith("context") and command == "bench")  # bench runs it at its own context sizes
]


@pytest.mark.parametrize(("case", "command"), LOAD_CASES)
def test_a_file_that_cannot_load_is_one_line_in_every_command(
    case: str, command: str, synthetic_tiny_gguf: Path, tmp_path: Path
) -> None:
    make, problem = HOSTILE_FILES[case]
    path = make(synthetic_tiny_gguf, tmp_path)
    line = _only_error(run_cli(*COMMANDS[command](path), input_text="hello\n", timeout=180))
    assert line.startswith(f"error: {path}: ") and problem in line, line


def test_a_template_that_loops_forever_is_one_line_in_bounded_memory(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    path = rewrite_gguf(synthetic_tiny_gguf, tmp_path / "loops.gguf", {CT: NESTED_LOOPS})
    start = time.monotonic()
    result = _run_limited("solve", "--model", str(path), "--threads", "1", "What is 1 plus 2?")
    assert time.monotonic() - start < 120
    lines = error_lines(result)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1] == (
        f"error: {path}: the chat template went past its bounds: more than {TEMPLATE_STEPS:,} loop iterations and calls"
    )


@pytest.fixture(scope="module")
def vocabulary(synthetic_tiny_gguf: Path) -> llama_cpp.Llama:
    return load_vocabulary(read_gguf_header(synthetic_tiny_gguf))


def _format(path: Path, vocabulary: llama_cpp.Llama, template: str) -> PromptFormat:
    header = read_gguf_header(path)
    header.metadata = {**header.metadata, CT: template}
    return PromptFormat(header, vocabulary)


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "<think>2 and 2</think>Four."},
    {"role": "user", "content": "And 3 + 3?"},
]
HOSTILE_TEMPLATES = {
    "nested loops": NESTED_LOOPS,
    "nested loops without output": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "loop over a long string": "{% for c in 'x' * 1000000 %}{% for d in 'y' * 1000000 %}{% endfor %}{% endfor %}",
    "one huge output": "{% for i in range(100000) %}{{ messages }}{% endfor %}",
    "repetition": "{{ 'x' * 10000000000 }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling by +": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "replace": "{% set s = 'x' * 10000 %}{{ s | replace('x', s) }}",
    "str.replace": "{% set s = 'x' * 10000 %}{{ s.replace('x', s) }}",
    "join of one long string": "{% set s = 'x' * 1000000 %}{{ ([s] * 100) | join }}",
    "join with a long separator": "{% set s = 'x' * 100000 %}{{ range(1000) | join(s) }}",
    "padding": "{{ 'x'.center(10000000000) }}",
    "a format width": "{{ '%0999999999d' % 1 }}",
    "str.format width": "{{ '{:999999999}'.format(1) }}",
    "indent by a long string": "{% set s = 'a\\n' * 100000 %}{{ s | indent(s) }}",
    "lipsum": "{{ lipsum(100000, false, 100000, 100000) }}",
    "power": "{{ 7 ** 1000000000 }}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
}


@pytest.mark.parametrize("case", list(HOSTILE_TEMPLATES))
def test_hostile_templates_stop_at_their_bounds(
    case: str, synthetic_tiny_gguf: Path, vocabulary: llama_cpp.Llama
) -> None:
    prompts = _format(synthetic_tiny_gguf, vocabulary, HOSTILE_TEMPLATES[case])
    start = time.monotonic()
    with pytest.raises(TemplateLimit) as error:
        prompts.render(MESSAGES)
    assert time.monotonic() - start < 15
    message = str(error.value)
    assert (
        message.startswith(f"{synthetic_tiny_gguf}: the chat template went past its bounds: ") and "\n" not in message
    )


QWEN_STYLE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- set ns = namespace(last=-1) %}"
    "{%- for message in messages[::-1] %}{%- if ns.last < 0 and message.role == 'user' %}"
    "{%- set ns.last = messages|length - 1 - loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}{% generation %}{{ content }}{% endgeneration %}{{ '<|im_end|>\\n' }}"
    "{%- if loop.last %}{{ '%d of %d' % (loop.index, loop.length) }}{%- endif %}{%- endif %}{%- endfor %}"
    "{{ messages[1] | tojson(indent=2) }}{{ (messages | map(attribute='role') | join(', ')) | upper }}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.mark.parametrize("template", ["the file's", QWEN_STYLE])
def test_templates_render_as_llama_cpp_python_renders_them(
    template: str, synthetic_tiny_gguf: Path, vocabulary: llama_cpp.Llama
) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    header = read_gguf_header(synthetic_tiny_gguf)
    text = header.get(CT) if template == "the file's" else template
    prompts = _format(synthetic_tiny_gguf, vocabulary, text)
    expected = Jinja2ChatFormatter(text, prompts.eos_text, prompts.bos_text)(messages=MESSAGES).prompt  # type: ignore[arg-type]
    assert prompts.render(MESSAGES) == expected


def test_tokens_are_llama_cpp_pythons(synthetic_tiny_gguf: Path, vocabulary: llama_cpp.Llama) -> None:
    prompts = PromptFormat(read_gguf_header(synthetic_tiny_gguf), vocabulary)
    for text in ["What is 2 + 2?", "<|begin_of_text|>already <|eot_id|> special", "é ü 日本 \t\n  spaced", ""]:
        expected = vocabulary.tokenize(text.encode(), add_bos=not text.startswith(prompts.bos_text), special=True)
        assert prompts.tokenize(text) == expected


@pytest.fixture(scope="module")
def engine(synthetic_tiny_gguf: Path) -> Engine:
    return Engine(synthetic_tiny_gguf, threads=1)


def test_a_huge_prompt_is_refused_before_it_is_tokenized(engine: Engine) -> None:
    question = "What is 1 plus 1? " * 1_200_000  # 21.6 MB
    start = time.monotonic()
    too_long = f"the prompt has 21,600,000 characters, more than the {engine.n_ctx:,} tokens the context holds"
    with pytest.raises(PromptTooLong, match=too_long):
        engine.generate(question, SamplingOptions(max_tokens=4))
    assert time.monotonic() - start < 1.0


def test_a_prompt_long_in_characters_but_within_the_context_is_still_tokenized(engine: Engine) -> None:
    """The refusal before tokenizing is only for texts that cannot fit; others are counted."""
    text = "<|reserved_special_token_5|>" * (engine.n_ctx // 20)  # one token for 28 characters
    tokens = engine.tokenize(text)
    assert len(tokens) < engine.n_ctx and not engine.prompt_format.surely_longer(text, engine.n_ctx)
    generation = engine.generate(text, SamplingOptions(max_tokens=2, seed=1))
    assert generation.prompt_tokens == len(tokens)


def test_a_huge_system_prompt_in_chat_is_one_line_in_bounded_memory(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    saved = tmp_path / "huge.json"
    saved.write_text(json.dumps({"system": "What is 1 plus 1? " * 800_000, "messages": []}))
    start = time.monotonic()
    result = _run_limited(
        "chat", "--model", str(synthetic_tiny_gguf), "--threads", "1", "--max-tokens", "4",
        input_text=f"/load {saved}\nhello\n",
    )  # fmt: skip
    assert time.monotonic() - start < 120
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    context = read_gguf_header(synthetic_tiny_gguf).hyperparameter("qwen3.context_length")  # shorter than 8192
    assert error_lines(result)[-1] == (
        f"error: the message needs more than {context - 1} tokens with the system prompt; "
        f"the context holds {context} (use a larger --ctx)"
    )


def _special_tokens_not_utf8(good: Path, folder: Path) -> Path:
    tokens = [token.encode() for token in gguf.GGUFReader(good).fields[gguf_keys.TOKENS].contents()]
    header = read_gguf_header(good)
    for token_id in (header.get(gguf_keys.BOS_ID), header.get(gguf_keys.EOS_ID), 1000, 2000):
        tokens[token_id] = b"\xff\xfe" + tokens[token_id]
    return rewrite_gguf(good, folder / "tokens-not-utf8.gguf", {gguf_keys.TOKENS: tokens})


def test_tokens_that_are_not_utf8_do_not_stop_bench(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    path = _special_tokens_not_utf8(synthetic_tiny_gguf, tmp_path)
    report = tmp_path / "bench.json"
    result = run_cli("bench", str(path), "-p", "16", "-n", "4", "-r", "1", "--json", "--out", str(report), timeout=600)
    assert result.returncode == 0, result.stderr
    model = json.loads(report.read_text())["models"][0]
    assert model["ttft_prompt_tokens"] > 0 and model["ttft_samples_ns"]


def test_special_tokens_that_are_not_utf8_are_one_line_in_solve(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    path = _special_tokens_not_utf8(synthetic_tiny_gguf, tmp_path)
    line = _only_error(run_cli("solve", "--model", str(path), "--threads", "1", "What is 1 plus 2?"))
    assert line == f"error: {path}: the BOS or EOS token is not UTF-8 text, which llama-cpp-python cannot load"


def test_ordinary_tokens_that_are_not_utf8_run(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    tokens = [token.encode() for token in gguf.GGUFReader(synthetic_tiny_gguf).fields[gguf_keys.TOKENS].contents()]
    for token_id in range(0, 120_000, 7):
        tokens[token_id] = b"\xff" + tokens[token_id]
    path = rewrite_gguf(synthetic_tiny_gguf, tmp_path / "bytes.gguf", {gguf_keys.TOKENS: tokens})
    result = run_cli("solve", "--model", str(path), "--threads", "1", "--max-tokens", "8", "--json", "What is 1+2?")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] == 8


def test_a_problem_argument_that_is_not_utf8_is_one_line(synthetic_tiny_gguf: Path) -> None:
    result = subprocess.run(
        [MLLM_CPU, "solve", "--model", str(synthetic_tiny_gguf), b"1+1\xff"], capture_output=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.decode().strip() == "error: the PROBLEM argument: not UTF-8 text (byte 0xff at character 4)"
    assert result.stdout == b""


def test_piped_chat_input_that_is_not_utf8_ends_the_chat_with_one_line(synthetic_tiny_gguf: Path) -> None:
    result = subprocess.run(
        [MLLM_CPU, "chat", "--model", str(synthetic_tiny_gguf), "--threads", "1", "--max-tokens", "3"],
        input=b"first question\n1+1\xff\nnever answered\n",
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.decode().splitlines() if line.strip()]
    assert lines[-1] == "error: stdin:2: not UTF-8 text (byte 0xff at column 4)"
    assert sum(line.startswith("error:") for line in lines) == 1
    assert result.stdout.decode().count("\n") == 1  # the first question's reply, kept


def test_a_system_prompt_that_is_not_utf8_is_one_line(synthetic_tiny_gguf: Path) -> None:
    result = subprocess.run(
        [MLLM_CPU, "chat", "--model", str(synthetic_tiny_gguf), "--system", b"be\xe9 brief"],
        input=b"hi\n",
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.decode().strip() == "error: --system: not UTF-8 text (byte 0xe9 at character 3)"


def test_lone_surrogates_are_named() -> None:
    assert unicode_text("plain é", "x") == "plain é"
    with pytest.raises(InputError, match=r"^here: not valid Unicode text \(a lone surrogate U\+D800 at character 3\)$"):
        unicode_text("ab\ud800", "here")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "not a JSON conversation (nested too deeply)"),
        ('[{"role": "user", "content": "a\\ud800"}]', "message 1: not valid Unicode text (a lone surrogate U+D800"),
        ('{"system": "\\udcff", "messages": []}', "the system prompt: not UTF-8 text (byte 0xff at character 1)"),
        (b"\xff", "not UTF-8 text (byte 0xff at byte 1)"),
    ],
)
def test_load_refuses_hostile_conversation_files(
    engine: Engine, tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = tmp_path / "hostile.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as error:
        run_command(Conversation(engine, SamplingOptions()), f"/load {path}")
    assert str(error.value).startswith(f"{path}: {message}")


def test_load_reads_only_regular_files_within_the_limit(engine: Engine, tmp_path: Path) -> None:
    conversation = Conversation(engine, SamplingOptions())
    large = tmp_path / "large.json"
    with large.open("wb") as handle:
        handle.truncate(CONVERSATION_FILE_LIMIT + 1)
    with pytest.raises(InputError, match=r"large.json: larger than 16 MiB, the limit for a conversation$"):
        conversation.load(large)
    for device, kind in (("/dev/zero", "a character device"), (str(tmp_path), "a folder")):
        with pytest.raises(InputError, match=f"is {kind}, not a regular file"):
            conversation.load(Path(device))
