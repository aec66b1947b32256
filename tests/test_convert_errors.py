"""Bad input to `mllm-cpu convert`: one clear error line, exit code 2, no partial file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.checkpoints import TINY, build_checkpoint
from helpers.cli_runner import MLLM_CPU, error_lines, files_in, run_cli
from mllm_cpu.convert.pipeline import SilentProgress, convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("sharded") / "MobileLLM-R1-tiny", TINY, shards=2)


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 1000)


def _corrupt_header(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(8)
        handle.write(b"\x00garbage")


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing config": (lambda f: (f / "config.json").unlink(), "config.json is missing"),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "no weights found"),
    "missing tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "unsupported architecture": (
        lambda f: _edit_config(f, architectures=["MistralForCausalLM"]),
        "unsupported architecture MistralForCausalLM; supported: Llama4ForCausalLM",
    ),
    "llama4 with experts": (
        lambda f: _edit_config(f, num_local_experts=16, interleave_moe_layer_step=1),
        "has experts (MoE)",
    ),
    "inconsistent shapes": (
        lambda f: _edit_config(f, intermediate_size_mlp=384),
        "feed_forward.gate_proj.weight has shape [256, 192], config.json implies [384, 192]",
    ),
    "truncated safetensors": (lambda f: _truncate(f / "model.safetensors"), "truncated"),
    "corrupt safetensors header": (lambda f: _corrupt_header(f / "model.safetensors"), "corrupt"),
    "config not json": (lambda f: (f / "config.json").write_text("{oops"), "config.json: not valid JSON"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_broken_checkpoint_gives_one_line_and_no_file(case: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    breakage, message = BREAKAGES[case]
    breakage(folder)
    outdir = tmp_path / "out"
    result = run_cli("convert", str(folder), "--outdir", str(outdir), "--quant", "f16,q4_0")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert files_in(outdir) == []


def test_missing_shard_is_named(sharded_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    shutil.copytree(sharded_checkpoint, folder)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    result = run_cli("convert", str(folder), "--outdir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert error_lines(result) == [f"error: {folder}: shard(s) named in the index are missing: {shard.name}"]
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quant", "q4_0,q9_9"], "unknown quant type q9_9; choose from: f32, f16"),
        (["--quant", " , "], "--quant is empty"),
        (["--embedding-type", "q7"], "unknown embedding type q7"),
        (["--frobnicate"], "No such option: --frobnicate"),
        (["--threads", "many"], "Invalid value for '--threads'"),
    ],
)
def test_bad_options(args: list[str], message: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli("convert", str(tiny_checkpoint), "--outdir", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0]
    assert files_in(tmp_path / "out") == []


def test_existing_output_is_kept_and_force_redoes_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    first = run_cli("convert", str(tiny_checkpoint), "--outdir", str(outdir), "--quant", "q8_0")
    assert first.returncode == 0, first.stderr
    [written] = outdir.glob("*.gguf")
    before = written.stat().st_mtime_ns
    again = run_cli("convert", str(tiny_checkpoint), "--outdir", str(outdir), "--quant", "f16,q8_0")
    assert again.returncode == 0, again.stderr
    assert f"kept {written.name} (already converted; --force redoes it)" in again.stderr
    assert len(files_in(outdir)) == 2 and written.stat().st_mtime_ns == before
    forced = run_cli("convert", str(tiny_checkpoint), "--outdir", str(outdir), "--quant", "f16,q8_0", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "kept" not in forced.stderr and written.stat().st_mtime_ns != before
    assert len(files_in(outdir)) == 2


class _InterruptAfter(SilentProgress):
    """A progress receiver that presses Ctrl-C (raises KeyboardInterrupt) at a chosen point."""

    def __init__(self, tensors: int | None = None, at_file: str | None = None) -> None:
        self.tensors, self.at_file, self.seen = tensors, at_file, 0

    def file_started(self, label: str, tensors: int | None) -> None:
        if self.at_file and self.at_file in label:
            raise KeyboardInterrupt

    def tensor_written(self, name: str) -> None:
        self.seen += 1
        if self.tensors is not None and self.seen >= self.tensors:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "progress",
    [_InterruptAfter(tensors=5), _InterruptAfter(at_file="Q4_0")],
    ids=["while writing", "before quantizing"],
)
def test_interrupt_leaves_no_partial_file(progress: _InterruptAfter, tiny_checkpoint: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_checkpoint, parse_quant_list("q4_0"), outdir, progress=progress)
    assert files_in(outdir) == []


def test_ctrl_c_in_a_real_run_leaves_no_partial_file(tmp_path: Path) -> None:
    """SIGINT to the CLI while it writes a 140M-shaped F32 file (~560 MB)."""
    outdir = tmp_path / "out"
    process = subprocess.Popen(
        [MLLM_CPU, "convert", "--synthetic", "140m", "--outdir", str(outdir), "--quant", "f32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(outdir.glob(".*.partial")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "conversion ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted" in stderr
    assert not [name for name in files_in(outdir) if name.endswith((".gguf", ".partial"))]
    assert not os.path.exists(outdir / "MobileLLM-R1-140M-synthetic-F32.gguf")
