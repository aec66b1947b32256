"""GGUF metadata that llama.cpp aborts or crashes on is refused by validation: one line, exit 2, in every path.

Each hostile file is a real converted tiny model (or llama.cpp's own llama4 conversion of it)
with one metadata value changed, as found by a fault probe: counts the tensors do not bear
out (block_count 0, 100000, 3000000), special token ids outside the vocabulary, an expert
count on a dense graph, a tokenizer llama.cpp cannot tokenize with, a RoPE scaling llama.cpp
does not know, and the llama4 file with one expert (a mislabelled MobileLLM-R1 conversion).
Every command runs as a real process under a 2 GiB address-space limit, so a file that makes
a command build something as large as its counts fails the test instead of the machine.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import pytest

from helpers.cli_runner import MLLM_CPU, error_lines, files_in
from helpers.llama_cpp_sources import convert_with_llama_cpp
from helpers.small_gguf import rewrite_gguf
from mllm_cpu.commands.console import terminal_safe
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.convert.repair import needs_repair
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import GIB
from mllm_cpu.model_file import validate_model_file

MEMORY_LIMIT = 2 * GIB
QUESTION = "What is 2+2?"


@dataclass(frozen=True)
class Case:
    """A hostile file: `changes` (as `rewrite_gguf` takes them) to the metadata of `source` ("ours" or "upstream")."""

    source: str
    changes: dict[str, Any]
    message: str
    damaged: bool
    """True when the metadata contradicts the file (refused by the header reader, also by `info`);
    False for a sound file llama.cpp cannot run (`info` shows it, with the problem)."""


CASES = {
    "block_count_0": Case("ours", {"qwen3.block_count": 0}, "qwen3.block_count is 0, but the file holds", True),
    "block_count_100000": Case("ours", {"qwen3.block_count": 100000}, "block_count is 100000, but", True),
    "block_count_3000000": Case("ours", {"qwen3.block_count": 3000000}, "block_count is 3000000, but", True),
    "eos_outside_vocabulary": Case(
        "ours",
        {gguf_keys.EOS_ID: 10**6},
        "tokenizer.ggml.eos_token_id is 1000000, outside the vocabulary of 1024 tokens",
        True,
    ),
    "bos_outside_vocabulary": Case(
        "ours", {gguf_keys.BOS_ID: 10**6}, "tokenizer.ggml.bos_token_id is 1000000, outside the vocabulary", True
    ),
    "eot_one_past_vocabulary": Case("ours", {gguf_keys.EOT_ID: 1024}, "eot_token_id is 1024, outside", True),
    "negative_pad": Case(
        "ours", {gguf.Keys.Tokenizer.PAD_ID: -1}, "padding_token_id is -1, outside the vocabulary", True
    ),
    "experts_on_qwen3": Case(
        "ours", {"qwen3.expert_count": 4}, "qwen3.expert_count is 4, but qwen3 has no experts", False
    ),
    "tokenizer_none": Case(
        "ours", {gguf_keys.TOKENIZER_MODEL: "none"}, "no tokenizer (tokenizer.ggml.model is 'none')", False
    ),
    "tokenizer_unknown": Case(
        "ours", {gguf_keys.TOKENIZER_MODEL: "wordpiece2"}, "'wordpiece2', not a tokenizer llama.cpp knows", False
    ),
    "rope_scaling_unknown": Case(
        "ours", {"qwen3.rope.scaling.type": "bogus"}, "qwen3.rope.scaling.type is 'bogus', not one", False
    ),
    "llama4_one_expert": Case(
        "upstream",
        {"llama4.expert_count": 1},
        "a llama4 file with one expert and no expert tensors (a mislabelled MobileLLM-R1 conversion)",
        False,
    ),
    "llama4_block_count_1000000": Case(
        "upstream", {"llama4.block_count": 10**6}, "llama4.block_count is 1000000, but the file holds", True
    ),
}


def run_limited(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """`mllm-cpu ARGS...` with its address space limited to MEMORY_LIMIT."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(
        [MLLM_CPU, *args], capture_output=True, text=True, timeout=300, input=input_text, preexec_fn=limit
    )


def assert_one_error(result: subprocess.CompletedProcess[str], path: Path, message: str) -> None:
    """Exit 2 (no signal), nothing on stdout, one `error:` line naming the file and the problem."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert result.stdout == ""
    (line,) = error_lines(result)
    assert line.startswith("error: ") and str(path) in line and message in line, line


@pytest.fixture(scope="module")
def sources(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Our F16 conversion of the tiny checkpoint, and llama.cpp's own (llama4, zero experts)."""
    folder = tmp_path_factory.mktemp("sources")
    ours = convert_checkpoint(tiny_checkpoint, parse_quant_list("f16"), folder)[0].summary.path
    upstream = convert_with_llama_cpp(tiny_checkpoint, folder / "upstream-f16.gguf", "f16")
    return {"ours": ours, "upstream": upstream}


@pytest.fixture(scope="module")
def hostile(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case written as a file named after it."""
    folder = tmp_path_factory.mktemp("hostile")
    return {
        name: rewrite_gguf(sources[case.source], folder / f"{name}.gguf", case.changes) for name, case in CASES.items()
    }


@pytest.mark.parametrize("name", CASES)
def test_validation_names_the_problem(hostile: dict[str, Path], name: str) -> None:
    with pytest.raises(InputError) as raised:
        validate_model_file(hostile[name])
    assert str(raised.value).startswith(f"{hostile[name]}: ") and CASES[name].message in str(raised.value)


@pytest.mark.parametrize("name", CASES)
def test_each_case_is_one_line_in_solve_repair_and_info(hostile: dict[str, Path], name: str, tmp_path: Path) -> None:
    """solve and repair refuse the file; info refuses a damaged one and shows an unrunnable one with its problem."""
    path, case = hostile[name], CASES[name]
    assert_one_error(run_limited("solve", QUESTION, "--model", str(path)), path, case.message)
    if name != "llama4_one_expert":  # that one is repaired: test_a_one_expert_llama4_file_is_repaired
        assert_one_error(run_limited("repair", str(path), "--outdir", str(tmp_path / "out")), path, case.message)
        assert files_in(tmp_path / "out") == []
    shown = run_limited("info", str(path), "--json")
    if case.damaged:
        assert_one_error(shown, path, case.message)
        return
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert details["runnable"] is False and details["problem"].startswith(f"{path}: ")
    assert case.message in details["problem"]


REPRESENTATIVES = ("block_count_3000000", "eos_outside_vocabulary", "experts_on_qwen3", "llama4_one_expert")
"""A case of each kind: a count built upon, an id looked up (both refused by the header reader), an expert
count llama.cpp asserts on and the named llama4 file (refused by validation)."""


def _path_arguments(command: str, path: Path, good: Path) -> tuple[tuple[str, ...], str | None]:
    """The arguments (and stdin) of each other path that validates a model file."""
    return {
        "chat": (("chat", "--model", str(path)), "Hi\n"),
        "bench": (("bench", str(path), "-p", "8", "-n", "4", "-r", "1", "--no-bandwidth"), None),
        "serve": (("serve", "--port", "0", "--model", str(path)), None),
        "draft": (("solve", QUESTION, "--model", str(good), "--draft", str(path), "--max-tokens", "4"), None),
    }[command]


@pytest.mark.parametrize("name", REPRESENTATIVES)
@pytest.mark.parametrize("command", ["chat", "bench", "serve", "draft"])
def test_every_path_refuses_the_file_in_one_line(
    hostile: dict[str, Path], sources: dict[str, Path], command: str, name: str
) -> None:
    args, stdin = _path_arguments(command, hostile[name], sources["ours"])
    assert_one_error(run_limited(*args, input_text=stdin), hostile[name], CASES[name].message)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_the_default_model_choice_skips_the_file(hostile: dict[str, Path], name: str, isolated_store: Path) -> None:
    models = isolated_store / "models"
    models.mkdir(parents=True, exist_ok=True)
    stored = Path(shutil.copy(hostile[name], models / hostile[name].name))
    result = run_limited("solve", QUESTION)
    assert_one_error(result, stored, "no runnable model in the store (1 files; first problem: ")
    assert CASES[name].message in result.stderr


def test_the_default_model_choice_takes_the_sound_file_among_hostile_ones(
    hostile: dict[str, Path], sources: dict[str, Path], isolated_store: Path
) -> None:
    models = isolated_store / "models"
    models.mkdir(parents=True, exist_ok=True)
    for path in hostile.values():
        shutil.copy(path, models / path.name)
    good = Path(shutil.copy(sources["ours"], models / sources["ours"].name))
    result = run_limited("solve", QUESTION, "--max-tokens", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["model"] == good.name
    listed = json.loads(run_limited("models", "--json").stdout)
    unreadable = {row["name"] for row in listed if row.get("error")}
    assert unreadable == {name for name, case in CASES.items() if case.damaged}


def test_a_one_expert_llama4_file_is_repaired(
    hostile: dict[str, Path], sources: dict[str, Path], tmp_path: Path
) -> None:
    """It holds the zero-expert file's tensors, so its repair is the same file's: the tensors are byte-identical."""
    one_expert = hostile["llama4_one_expert"]
    assert needs_repair(one_expert)
    result = run_limited("repair", str(one_expert), "--outdir", str(tmp_path / "one"), "--json")
    assert result.returncode == 0, result.stderr
    repaired = Path(json.loads(result.stdout)["file"])
    zero = run_limited("repair", str(sources["upstream"]), "--outdir", str(tmp_path / "zero"), "--json")
    assert zero.returncode == 0, zero.stderr
    assert _tensor_bytes(repaired) == _tensor_bytes(Path(json.loads(zero.stdout)["file"]))
    model = validate_model_file(repaired)
    assert model.header.architecture == "qwen3" and not needs_repair(repaired)
    assert model.header.get(gguf_keys.REPAIRED_FROM) == one_expert.name
    answered = run_limited("solve", QUESTION, "--model", str(repaired), "--max-tokens", "4", "--json")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["tokens"] > 0


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    header = read_gguf_header(path)
    with path.open("rb") as handle:
        found = {}
        for tensor in header.tensors:
            handle.seek(header.data_start + tensor.offset)
            found[tensor.name] = handle.read(tensor.n_bytes)
    return found


def test_an_array_longer_than_the_file_is_refused_before_it_is_read(sources: dict[str, Path], tmp_path: Path) -> None:
    """A count of 2^40 items in a 2 MB file: one line, without reading or allocating anything for it."""
    path = Path(shutil.copy(sources["ours"], tmp_path / "long-array.gguf"))
    start, _ = read_gguf_header(path).value_spans[gguf.Keys.Tokenizer.TOKEN_TYPE]
    with path.open("r+b") as handle:
        handle.seek(start + 8)  # type tag (4 bytes), item type (4 bytes), then the item count
        handle.write((1 << 40).to_bytes(8, "little"))
    result = run_limited("info", str(path))
    assert_one_error(result, path, "claims 1099511627776 items, more than the rest of the file holds")


def test_metadata_text_is_printed_with_its_control_characters_escaped(
    sources: dict[str, Path], tmp_path: Path, isolated_store: Path
) -> None:
    name = "evil\x1b[31mRED\x1b[0m\x07\nsecond line\u202e"
    path = rewrite_gguf(sources["ours"], tmp_path / "named.gguf", {gguf_keys.NAME: name})
    shown = run_limited("info", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout and "\u202e" not in shown.stdout
    assert terminal_safe(name) in shown.stdout
    assert terminal_safe(name) == r"evil\x1b[31mRED\x1b[0m\x07\nsecond line\u202e"
    assert json.loads(run_limited("info", str(path), "--json").stdout)["name"] == name  # JSON keeps the value

    models = isolated_store / "models"
    models.mkdir(parents=True, exist_ok=True)
    stored = models / "odd\x1bname.gguf"
    shutil.copy(path, stored)
    listed = run_limited("models")
    assert listed.returncode == 0 and "\x1b" not in listed.stdout and r"odd\x1bname" in listed.stdout
    solved = run_limited("solve", QUESTION, "--model", str(stored), "--max-tokens", "2")
    assert solved.returncode == 0, solved.stderr
    assert "\x1b" not in solved.stderr and r"odd\x1bname.gguf" in solved.stderr


def test_terminal_safe_keeps_printable_text() -> None:
    assert terminal_safe("MobileLLM-R1 950M · ünï 名前 [x]") == "MobileLLM-R1 950M · ünï 名前 [x]"
    assert terminal_safe("a\tb\r\x00\x9b\ud800") == r"a\tb\r\x00\x9b\ud800"
