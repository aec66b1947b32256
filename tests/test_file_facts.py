"""Facts kept about unchanged files (`file_facts.py`): where a model's vocabulary lies, so a start reads its
header without stepping through 128k strings again; and that nothing kept outlives a change of the file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers.small_gguf import write_small_gguf
from mllm_cpu.convert.gguf_header import VOCABULARY_KEYS, GGUFHeader, read_gguf_header
from mllm_cpu.core.errors import InputError
from mllm_cpu.file_facts import FileFacts, file_key
from mllm_cpu.model_file import HEADER_CACHE, read_model_header


def _same(a: GGUFHeader, b: GGUFHeader) -> bool:
    return (a.metadata, a.tensors, a.array_lengths, a.value_spans, a.data_start) == (
        b.metadata,
        b.tensors,
        b.array_lengths,
        b.value_spans,
        b.data_start,
    )


@pytest.fixture
def model(synthetic_tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tiny synthetic model (a 128k-token vocabulary), with a cache of its own."""
    monkeypatch.setenv("MLLM_CPU_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copy(synthetic_tiny_gguf, tmp_path / "model.gguf"))


def test_a_second_read_jumps_the_vocabulary_and_reads_the_same_header(model: Path, tmp_path: Path) -> None:
    full = read_gguf_header(model)
    first = read_model_header(model)
    kept = json.loads((tmp_path / "cache" / HEADER_CACHE).read_text())[str(model)]
    assert kept["key"] == file_key(model)
    assert kept["value"] == {name: list(full.value_spans[name]) for name in VOCABULARY_KEYS}
    second = read_model_header(model)
    assert _same(full, first) and _same(full, second)


def test_the_reader_follows_the_spans_it_is_given(model: Path) -> None:
    """The spans are what the reader jumps by (a lying one breaks the read), so they are only ever used
    for the file, unchanged, that they were read from; a span that starts elsewhere is not used."""
    full = read_gguf_header(model)
    tokens, merges = (full.value_spans[name] for name in VOCABULARY_KEYS)
    assert _same(full, read_gguf_header(model, vocabulary_spans={VOCABULARY_KEYS[0]: tokens}))
    assert _same(full, read_gguf_header(model, vocabulary_spans={VOCABULARY_KEYS[0]: (tokens[0] + 1, merges[0])}))
    assert _same(full, read_gguf_header(model, vocabulary_spans={VOCABULARY_KEYS[0]: (tokens[0], 1 << 40)}))
    with pytest.raises(InputError):
        read_gguf_header(model, vocabulary_spans={VOCABULARY_KEYS[0]: (tokens[0], merges[1])})


def test_a_changed_file_is_read_in_full(model: Path) -> None:
    read_model_header(model)
    write_small_gguf(model, "qwen3")  # another file under the same name: another size and mtime
    assert _same(read_gguf_header(model), read_model_header(model))


@pytest.mark.parametrize("content", [b"\xff\xfe{", b"[]", b'{"x": 1}', b"spans"])
def test_a_broken_cache_is_an_empty_one(content: bytes, model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / HEADER_CACHE
    cache.parent.mkdir(parents=True)
    if content == b"spans":  # the file's own key, with spans that are not spans
        content = json.dumps({str(model): {"key": file_key(model), "value": {"tokenizer.ggml.tokens": ["a", 1]}}})
        content = content.encode()
    cache.write_bytes(content)
    assert _same(read_gguf_header(model), read_model_header(model))
    assert str(model) in json.loads(cache.read_text())  # and it is replaced by a good one


def test_facts_of_files_that_are_gone_are_dropped(model: Path, tmp_path: Path) -> None:
    other = Path(shutil.copy(model, tmp_path / "other.gguf"))
    read_model_header(other)
    read_model_header(model)
    other.unlink()
    read_model_header(model)
    assert list(json.loads((tmp_path / "cache" / HEADER_CACHE).read_text())) == [str(model)]


def test_a_cache_that_cannot_be_written_is_left_alone(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLLM_CPU_CACHE", "/dev/null/cache")
    facts = FileFacts(HEADER_CACHE)
    facts.put(model, file_key(model), {"fact": 1})
    facts.save()  # no error: the fact is read again next time
    assert FileFacts(HEADER_CACHE).get(model, file_key(model)) is None
    assert _same(read_gguf_header(model), read_model_header(model))


def test_a_fact_holds_only_under_its_files_key(model: Path) -> None:
    facts = FileFacts("facts.json")
    facts.put(model, file_key(model), {"fact": 1})
    facts.save()
    kept = FileFacts("facts.json")
    assert kept.get(model, file_key(model)) == {"fact": 1}
    os.utime(model, ns=(1, 1))
    assert kept.get(model, file_key(model)) is None
