"""Hostile checkpoint folders given to `mllm-cpu convert`: each is one `error:` line naming the
file (and the field), exit 2, no output file, bounded memory and no hang.

Every case runs the installed CLI in a child process with an address-space limit
(RLIMIT_AS) well below what the unbounded cases used to take (3.5-4 GB), so a regression
fails here instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.cli_runner import MLLM_CPU, error_lines, files_in, run_cli
from mllm_cpu.convert.checkpoint_files import FILE_LIMITS, MAX_JSON_DEPTH
from mllm_cpu.convert.model_spec import DIMENSION_LIMITS
from mllm_cpu.convert.safetensors_reader import HEADER_LIMIT
from mllm_cpu.core.values import GIB

MEMORY_LIMIT = 1 * GIB
"""A tiny conversion needs about 300 MB of address space (llama.cpp's quantizer included)."""
TIMEOUT_S = 60


def convert_limited(folder: Path, outdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`mllm-cpu convert FOLDER --outdir OUTDIR -q f16` under MEMORY_LIMIT and a time limit."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(
        [MLLM_CPU, "convert", str(folder), "--outdir", str(outdir), "-q", "f16", *extra],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=limit_memory,
    )


def assert_one_error(result: subprocess.CompletedProcess[str], expected: str, outdir: Path) -> None:
    """Exit 2, exactly `error: EXPECTED` on stderr, and no output folder or file."""
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"error: {expected}"], result.stderr
    assert not outdir.exists(), files_in(outdir)


@pytest.fixture
def checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny checkpoint to break."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "MobileLLM-R1-tiny"))


def edit_json(path: Path, change: Callable[[Any], object]) -> None:
    """Rewrite a JSON file after `change(data)` changed its data in place."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_header(path: Path, change: Callable[[dict[str, Any]], bytes | None]) -> None:
    """Rewrite a safetensors header in place (the data after it is kept); `change` may return raw header bytes."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    replaced = change(header)
    encoded = replaced if replaced is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def tensors(header: dict[str, Any]) -> list[str]:
    return [name for name in header if name != "__metadata__"]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Memory: dimensions are bounded before anything is sized by them, files before they are read.


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_hidden_layers", 1e9, f"num_hidden_layers must be at most {DIMENSION_LIMITS['num_hidden_layers']}"),
        ("vocab_size", 10**8, f"vocab_size must be at most {DIMENSION_LIMITS['vocab_size']}"),
        ("hidden_size", 2**40, f"hidden_size must be at most {DIMENSION_LIMITS['hidden_size']}"),
        ("max_position_embeddings", 2**32 - 1, "max_position_embeddings must be at most"),
        ("rope_theta", 1e300, "rope_theta must be at most"),
    ],
)
def test_config_dimensions_are_bounded(key: str, value: object, message: str, checkpoint: Path, tmp_path: Path) -> None:
    edit_json(checkpoint / "config.json", lambda config: config.update({key: value}))
    result = convert_limited(checkpoint, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line.startswith(f"error: {checkpoint / 'config.json'}: {message}"), line
    assert not (tmp_path / "out").exists()


def test_layer_count_is_checked_against_the_tensors_before_planning(checkpoint: Path, tmp_path: Path) -> None:
    edit_json(checkpoint / "config.json", lambda config: config.update(num_hidden_layers=1000))
    result = convert_limited(checkpoint, tmp_path / "out")
    assert_one_error(
        result, f"{checkpoint}: config.json gives num_hidden_layers 1000, the checkpoint holds 3", tmp_path / "out"
    )


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"])
def test_a_huge_json_file_is_refused_unread(name: str, checkpoint: Path, tmp_path: Path) -> None:
    """A sparse 8 GiB file: reading it would pass the memory limit many times over."""
    path = checkpoint / name
    path.unlink()
    with path.open("wb") as handle:
        handle.truncate(8 * GIB)
    result = convert_limited(checkpoint, tmp_path / "out")
    limit = FILE_LIMITS[name] >> 20
    assert_one_error(result, f"{path}: larger than {limit} MiB, the limit for a {name}", tmp_path / "out")


def test_a_huge_safetensors_header_is_refused_unread(checkpoint: Path, tmp_path: Path) -> None:
    weights = checkpoint / "model.safetensors"
    claimed = 4 * GIB
    with weights.open("wb") as handle:
        handle.write(struct.pack("<Q", claimed))
        handle.truncate(8 + claimed + 1)
    result = convert_limited(checkpoint, tmp_path / "out")
    assert_one_error(
        result,
        f"{weights}: safetensors header of {claimed} bytes, larger than {HEADER_LIMIT >> 20} MiB",
        tmp_path / "out",
    )


def test_a_template_past_its_limit_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    template = "{{ bos_token }}" + " " * FILE_LIMITS["chat_template.jinja"]
    edit_json(checkpoint / "tokenizer_config.json", lambda config: config.update(chat_template=template))
    result = convert_limited(checkpoint, tmp_path / "out")
    assert_one_error(
        result, f"{checkpoint / 'tokenizer_config.json'}: the chat template is larger than 1 MiB", tmp_path / "out"
    )


# Devices, FIFOs and folders where a file belongs: one line, never a hang or an endless read.


def _replace(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(kind)


@pytest.mark.parametrize(
    ("name", "kind", "what"),
    [
        ("config.json", "/dev/zero", "a character device"),
        ("tokenizer.json", "fifo", "a FIFO (named pipe)"),
        ("tokenizer_config.json", "/dev/urandom", "a character device"),
        ("generation_config.json", "folder", "a folder"),
        ("model.safetensors", "fifo", "a FIFO (named pipe)"),
        ("chat_template.jinja", "fifo", "a FIFO (named pipe)"),
        ("README.md", "/dev/zero", "a character device"),
    ],
)
def test_what_is_not_a_regular_file_is_one_line(
    name: str, kind: str, what: str, checkpoint: Path, tmp_path: Path
) -> None:
    if name == "chat_template.jinja":  # read only when tokenizer_config.json has no template
        edit_json(checkpoint / "tokenizer_config.json", lambda config: config.pop("chat_template"))
    _replace(checkpoint / name, kind)
    result = convert_limited(checkpoint, tmp_path / "out")
    assert_one_error(result, f"{checkpoint / name}: is {what}, not a regular file", tmp_path / "out")


# Wrong types: one line naming the file and the field.

TOKENIZER_CASES: dict[str, tuple[str, Callable[[Any], Any], str]] = {
    "temperature is text": (
        "generation_config.json",
        lambda d: d.update(temperature="hot"),
        'temperature must be a number of at least 0, got "hot"',
    ),
    "top_p out of range": (
        "generation_config.json",
        lambda d: d.update(top_p=5),
        "top_p must be a number above 0 and at most 1, got 5",
    ),
    "top_k is a float": (
        "generation_config.json",
        lambda d: d.update(top_k=2.5),
        "top_k must be an integer from 0 to 2147483647, got 2.5",
    ),
    "eos id outside the vocabulary": (
        "generation_config.json",
        lambda d: d.update(eos_token_id=[10**6]),
        "token id 1000000 (eos_token_id) does not fit the model's vocabulary of 1024",
    ),
    "bos id is text": (
        "generation_config.json",
        lambda d: d.update(bos_token_id="768"),
        'bos_token_id must be a token id (a non-negative integer), got "768"',
    ),
    "added token id is text": (
        "tokenizer.json",
        lambda d: d["added_tokens"][0].update(id="5"),
        'added_tokens[0].id must be a token id (a non-negative integer), got "5"',
    ),
    "added token without content": (
        "tokenizer.json",
        lambda d: d["added_tokens"][1].pop("content"),
        'added_tokens[1] must be an object with a "content" string, got {"id": 769',
    ),
    "merge with a null": (
        "tokenizer.json",
        lambda d: d["model"]["merges"].__setitem__(3, [5, None]),
        "model.merges[3] must be a string or a pair of strings, got [5, null]",
    ),
    "merges not a list": (
        "tokenizer.json",
        lambda d: d["model"].update(merges={"a": "b"}),
        'model.merges must be a list, got {"a": "b"}',
    ),
    "vocabulary id is text": (
        "tokenizer.json",
        lambda d: d["model"]["vocab"].update(a="1"),
        'model.vocab["a"] must be a token id (a non-negative integer), got "1"',
    ),
    "negative vocabulary id": (
        "tokenizer.json",
        lambda d: d["model"]["vocab"].update(a=-5),
        'model.vocab["a"] must be a token id (a non-negative integer), got -5',
    ),
    "bos token is a number": (
        "tokenizer_config.json",
        lambda d: d.update(bos_token=768),
        'bos_token must be a token, or an object with a "content" token, got 768',
    ),
    "add_bos_token is text": (
        "tokenizer_config.json",
        lambda d: d.update(add_bos_token="yes"),
        'add_bos_token must be true or false, got "yes"',
    ),
    "chat template not text": (
        "tokenizer_config.json",
        lambda d: d.update(chat_template=5),
        "chat_template must be a template (text), got 5",
    ),
    "chat template list without templates": (
        "tokenizer_config.json",
        lambda d: d.update(chat_template=[{"name": "default", "template": 5}]),
        'chat_template must be a template, or a list of {"name", "template"}, got [{"name": "default", "template": 5}]',
    ),
    "invalid Jinja": (
        "tokenizer_config.json",
        lambda d: d.update(chat_template="{% for message in %}{{ message }}"),
        "the chat template is not valid Jinja: Expected an expression, got 'end of statement block' (line 1)",
    ),
    "unknown Jinja filter": (
        "tokenizer_config.json",
        lambda d: d.update(chat_template="{{ messages | shout }}"),
        "the chat template is not valid Jinja: No filter named 'shout'. (line 1)",
    ),
    "Jinja nested too deeply": (
        "tokenizer_config.json",
        lambda d: d.update(chat_template="{% if x %}" * 5000 + "{% endif %}" * 5000),
        "the chat template does not compile: nested too deeply",
    ),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_tokenizer_and_generation_values_are_checked(case: str, checkpoint: Path, tmp_path: Path) -> None:
    name, change, message = TOKENIZER_CASES[case]
    edit_json(checkpoint / name, change)
    result = convert_limited(checkpoint, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line.startswith(f"error: {checkpoint / name}: {message}"), line
    assert not (tmp_path / "out").exists()


def test_invalid_chat_template_jinja_file(checkpoint: Path, tmp_path: Path) -> None:
    edit_json(checkpoint / "tokenizer_config.json", lambda config: config.pop("chat_template"))
    (checkpoint / "chat_template.jinja").write_text("{{ messages[0]['content'] }\n")
    result = convert_limited(checkpoint, tmp_path / "out")
    assert_one_error(
        result,
        f"{checkpoint / 'chat_template.jinja'}: the chat template is not valid Jinja: unexpected '}}' (line 1)",
        tmp_path / "out",
    )


CONFIG_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "no_rope_layers text": ({"no_rope_layers": "abc"}, 'no_rope_layers must be a list of 0 or 1 per layer, got "abc"'),
    "no_rope_layers of text": (
        {"no_rope_layers": ["1"]},
        'no_rope_layers must be a list of 0 or 1 per layer, got ["1"]',
    ),
    "architectures text": (
        {"architectures": "Llama4ForCausalLM"},
        'architectures must be a list of class names, got "Llama4ForCausalLM"',
    ),
    "tie_word_embeddings text": (
        {"tie_word_embeddings": "yes"},
        'tie_word_embeddings must be true or false, got "yes"',
    ),
    "use_qk_norm a list": ({"use_qk_norm": []}, "use_qk_norm must be true or false, got []"),
    "rope_scaling text": ({"rope_scaling": "yarn"}, 'rope_scaling must be an object, got "yarn"'),
    "attention_chunk_size text": (
        {"attention_chunk_size": "4k"},
        'attention_chunk_size must be a positive integer, got "4k"',
    ),
    "layer_types of numbers": (
        {"layer_types": [1, 2, 3]},
        "layer_types must be a list of attention types, got [1, 2, 3]",
    ),
    "text_config a list": ({"text_config": []}, "text_config must be an object, got []"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_values_are_checked_by_type(case: str, checkpoint: Path, tmp_path: Path) -> None:
    changes, message = CONFIG_CASES[case]
    edit_json(checkpoint / "config.json", lambda config: config.update(changes))
    result = convert_limited(checkpoint, tmp_path / "out")
    assert_one_error(result, f"{checkpoint / 'config.json'}: {message}", tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("config.json", nested(100_000)),
        ("tokenizer.json", '{"model": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)),
        ("tokenizer_config.json", nested(100_000)),
        ("generation_config.json", nested(100_000)),
    ],
)
def test_deep_json_is_one_line(name: str, text: str, checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / name).write_text(text)
    result = convert_limited(checkpoint, tmp_path / "out")
    assert_one_error(result, f"{checkpoint / name}: JSON nested more than {MAX_JSON_DEPTH} deep", tmp_path / "out")


def test_model_card_values_are_checked(checkpoint: Path, tmp_path: Path) -> None:
    card = checkpoint / "README.md"
    card.write_text("---\nlicense: other\ntags:\n  - [nested, list]\n---\n# Model\n")
    result = convert_limited(checkpoint, tmp_path / "out")
    assert_one_error(result, f'{card}: tags must be text, got ["nested", "list"]', tmp_path / "out")
    card.write_text("---\nlicense: [unclosed\n---\n")
    result = convert_limited(checkpoint, tmp_path / "out")
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert error_lines(result)[0].startswith(f"error: {card}: the YAML front matter is not valid")


def test_model_card_parts_that_are_no_file_name_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "README.md").write_text("---\nfinetune: ../../escape\n---\n")
    result = convert_limited(checkpoint, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line.startswith(f"error: {checkpoint}: the model's name parts make the file name 'MobileLLM-R1-tiny-")
    assert line.endswith("-../../escape-F16', not a plain name; give --name")
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("*escape*"))
    named = convert_limited(checkpoint, tmp_path / "out", "--name", "MobileLLM-R1-tiny")
    assert named.returncode == 0, named.stderr
    assert files_in(tmp_path / "out") == ["MobileLLM-R1-tiny-F16.gguf"]


# Safetensors headers: every entry's type, and its data inside the file without overlaps.


def _same_size_pair(header: dict[str, Any]) -> tuple[str, str]:
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name in tensors(header):
        by_shape.setdefault(tuple(header[name]["shape"]), []).append(name)
    first, second, *_ = next(names for names in by_shape.values() if len(names) > 1)
    return first, second


def _overlap(header: dict[str, Any]) -> None:
    first, second = _same_size_pair(header)
    header[second]["data_offsets"] = header[first]["data_offsets"]


def _shift(header: dict[str, Any], by: int) -> None:
    name = min(tensors(header), key=lambda n: header[n]["data_offsets"][0])
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + by, end + by]


HEADER_CASES: dict[str, tuple[Callable[[dict[str, Any]], bytes | None], str]] = {
    "dtype a list": (
        lambda h: h["model.norm.weight"].update(dtype=["F32"]),
        'tensor model.norm.weight: dtype must be a type name such as BF16, got ["F32"]',
    ),
    "shape text": (
        lambda h: h["model.norm.weight"].update(shape="320x128"),
        'tensor model.norm.weight: shape must be a list of non-negative integers, got "320x128"',
    ),
    "shape with a negative size": (
        lambda h: h["model.norm.weight"].update(shape=[-192]),
        "tensor model.norm.weight: shape must be a list of non-negative integers, got [-192]",
    ),
    "offsets text": (
        lambda h: h["model.norm.weight"].update(data_offsets="0-768"),
        'tensor model.norm.weight: data_offsets must be two non-negative integers, got "0-768"',
    ),
    "negative offsets": (
        lambda h: _shift(h, -4),
        "tensor model.embed_tokens.weight: data_offsets must be two non-negative integers, got [-4, 786428]",
    ),
    "offsets past the end": (lambda h: _shift(h, 10**9), "truncated: tensor model.embed_tokens.weight ends at byte"),
    "entry not an object": (
        lambda h: h.update({"model.norm.weight": 5}),
        "tensor model.norm.weight: its entry must be an object, got 5",
    ),
    "header nested deeply": (lambda h: nested(100_000).encode(), "corrupt safetensors header: JSON nested more than"),
    "header not UTF-8": (lambda h: b'{"\xff": 1}', "corrupt safetensors header (not UTF-8)"),
    "header not an object": (lambda h: b"[1, 2]", "corrupt safetensors header (not a JSON object)"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_safetensors_entries_are_checked(case: str, checkpoint: Path, tmp_path: Path) -> None:
    change, message = HEADER_CASES[case]
    weights = checkpoint / "model.safetensors"
    edit_header(weights, change)
    result = convert_limited(checkpoint, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line.startswith(f"error: {weights}: {message}"), line
    assert not (tmp_path / "out").exists()


def test_overlapping_tensors_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    weights = checkpoint / "model.safetensors"
    pair: list[str] = []

    def overlap(header: dict[str, Any]) -> None:
        pair.extend(sorted(_same_size_pair(header), key=lambda n: header[n]["data_offsets"]))
        _overlap(header)

    edit_header(weights, overlap)
    result = convert_limited(checkpoint, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    first, second = pair
    assert line.startswith(f"error: {weights}: tensors ") and " overlap (data_offsets [" in line, line
    assert first in line and second in line


def test_a_tensor_in_two_shards_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    weights = checkpoint / "model.safetensors"
    copy = checkpoint / "model-00002-of-00002.safetensors"
    shutil.copyfile(weights, copy)
    first = weights.rename(checkpoint / "model-00001-of-00002.safetensors")
    names = tensors(json.loads(first.read_bytes()[8 : 8 + struct.unpack("<Q", first.read_bytes()[:8])[0]]))
    weight_map = {name: (first if i % 2 else copy).name for i, name in enumerate(names)}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    result = convert_limited(checkpoint, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line.startswith(f"error: {checkpoint}: tensor ") and f"is in both {first.name} and {copy.name}" in line


def test_index_shards_must_be_files_of_the_folder(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "../../etc/passwd"}})
    )
    result = convert_limited(checkpoint, tmp_path / "out")
    index = checkpoint / "model.safetensors.index.json"
    assert_one_error(
        result,
        f'{index}: weight_map must be an object of tensor names to shard file names, got {{"model.norm.weight": '
        '"../../etc/passwd"}',
        tmp_path / "out",
    )


# Names and paths: control characters are refused in one line, nothing is created.


@pytest.mark.parametrize("name", ["two\nlines", "bell\a", "escape\x1b[31m"])
def test_names_with_control_characters(name: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out" / "nested"
    result = run_cli("convert", str(tiny_checkpoint), "--outdir", str(outdir), "-q", "f16", "--name", name)
    message = f"--name {name!r}: give a plain name (no '/', '\\', leading '.' or control characters)"
    assert result.returncode == 2
    assert error_lines(result) == [f"error: {message}"]
    assert not (tmp_path / "out").exists()
    repaired = run_cli("repair", str(tmp_path / "any.gguf"), "--outdir", str(tmp_path), "--name", name)
    assert repaired.returncode == 2
    assert error_lines(repaired) == [f"error: {message}"]
    assert files_in(tmp_path) == []


def test_paths_with_control_characters(tiny_checkpoint: Path, tmp_path: Path) -> None:
    odd = tmp_path / "new\nline"
    result = run_cli("convert", str(odd), "-q", "f16")
    assert result.returncode == 2
    assert error_lines(result) == [f"error: checkpoint folder {str(odd)!r}: the path has control characters"]
    result = run_cli("convert", str(tiny_checkpoint), "--outdir", str(odd), "-q", "f16")
    assert error_lines(result) == [f"error: --outdir {str(odd)!r}: the path has control characters"]
    assert files_in(tmp_path) == []


def test_the_output_folder_is_removed_when_the_input_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "config.json").write_text("{")
    outdir = tmp_path / "made" / "for" / "output"
    result = run_cli("convert", str(checkpoint), "--outdir", str(outdir), "-q", "f16")
    assert result.returncode == 2 and len(error_lines(result)) == 1
    assert not (tmp_path / "made").exists()


@pytest.mark.parametrize(("threads", "message"), [("0", "at least 1, got 0"), ("-1", "at least 1, got -1")])
def test_threads_below_one(threads: str, message: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli(
        "convert", str(tiny_checkpoint), "--outdir", str(tmp_path / "out"), "-q", "q4_0", f"--threads={threads}"
    )
    assert result.returncode == 2
    assert error_lines(result) == [f"error: --threads must be {message}"]
    assert not (tmp_path / "out").exists()


def test_threads_past_the_cpus(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cpus = os.cpu_count() or 1
    result = run_cli(
        "convert", str(tiny_checkpoint), "--outdir", str(tmp_path / "out"), "-q", "q4_0", "--threads", "100000"
    )
    assert result.returncode == 2
    assert error_lines(result) == [f"error: --threads must be at most {cpus}, got 100000"]
    ok = run_cli(
        "convert", str(tiny_checkpoint), "--outdir", str(tmp_path / "out"), "-q", "q4_0", "--threads", str(cpus)
    )
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "out") == ["MobileLLM-R1-tiny-936K-Q4_0.gguf"]
