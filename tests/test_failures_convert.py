"""`mllm-cpu convert` when things go wrong: Ctrl-C or SIGTERM in llama.cpp's quantizer, a killed
run, a read-only or full disk, bad names and bad config values. Real processes and signals."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cli_runner import MLLM_CPU, error_lines, files_in, run_cli
from helpers.read_only import read_only_mount, tmpfs_mount
from mllm_cpu.convert.model_spec import spec_from_config
from mllm_cpu.convert.pipeline import load_checkpoint
from mllm_cpu.convert.synthetic import write_synthetic_checkpoint
from mllm_cpu.core.errors import InputError


@pytest.fixture(scope="module")
def checkpoint_140m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 140M checkpoint: big enough that llama.cpp's quantizer runs for seconds."""
    return write_synthetic_checkpoint("140m", tmp_path_factory.mktemp("s140"))


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    with read_only_mount(tmp_path / "read-only") as folder:
        yield folder


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MLLM_CPU, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for(condition: object, process: subprocess.Popen[str], seconds: float = 120) -> None:
    """Poll `condition()` until true; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, f"the conversion ended too early:\n{process.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out waiting for the conversion"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _in_quantizer(outdir: Path, label: str) -> bool:
    """llama.cpp has started writing the quantized file (its hidden partial file grows)."""
    partials = [p for p in outdir.glob(f".*-{label}.gguf.partial") if p.stat().st_size > 0]
    return bool(partials)


def test_ctrl_c_inside_llama_cpp_quantizer_stops_with_130(checkpoint_140m: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    process = _start("convert", str(checkpoint_140m), "--outdir", str(outdir), "--quant", "q4_k_m")
    _wait_for(lambda: _in_quantizer(outdir, "Q4_K_M"), process)
    time.sleep(0.5)
    assert process.poll() is None, "the quantizer finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr
    assert files_in(outdir) == []


def test_sigterm_cleans_up_like_ctrl_c(checkpoint_140m: Path, tmp_path: Path) -> None:
    """SIGTERM while llama.cpp quantizes: the partial files go, the finished level stays, exit 143."""
    outdir = tmp_path / "out"
    process = _start("convert", str(checkpoint_140m), "--outdir", str(outdir), "--quant", "bf16,q4_k_m")
    _wait_for(lambda: _in_quantizer(outdir, "Q4_K_M"), process)
    quantizers = _children(process.pid)
    assert process.poll() is None and quantizers, "the quantizer finished before it could be terminated"
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.splitlines()[-1] == "terminated" and "Traceback" not in stderr
    assert files_in(outdir) == ["MobileLLM-R1-140M-synthetic-BF16.gguf"]
    assert not any(_alive(pid) for pid in quantizers), "the quantizer outlived the terminated conversion"


def test_sigterm_in_our_own_writer(checkpoint_140m: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    process = _start("convert", str(checkpoint_140m), "--outdir", str(outdir), "--quant", "f32")
    _wait_for(lambda: _in_quantizer(outdir, "F32"), process)
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert files_in(outdir) == []


def test_killed_conversion_resumes(checkpoint_140m: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    args = ("convert", str(checkpoint_140m), "--outdir", str(outdir), "--quant", "bf16,q4_0")
    process = _start(*args)
    _wait_for(lambda: _in_quantizer(outdir, "Q4_0"), process)
    quantizers = _children(process.pid)
    assert quantizers, "llama.cpp's quantizer runs in a child process"
    process.kill()
    process.communicate(timeout=30)
    leftovers = [name for name in files_in(outdir) if name.endswith(".partial")]
    assert leftovers and "MobileLLM-R1-140M-synthetic-BF16.gguf" in files_in(outdir)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in quantizers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in quantizers), "the quantizer outlived the killed conversion"

    finished = outdir / "MobileLLM-R1-140M-synthetic-BF16.gguf"
    before = finished.stat().st_mtime_ns
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    for name in leftovers:
        assert f"removed {name}, left by an interrupted conversion" in rerun.stderr
    assert f"kept {finished.name} (already converted; --force redoes it)" in rerun.stderr
    assert finished.stat().st_mtime_ns == before
    assert files_in(outdir) == [finished.name, "MobileLLM-R1-140M-synthetic-Q4_0.gguf"]


def test_outdir_that_is_a_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    result = run_cli("convert", str(tiny_checkpoint), "--outdir", str(target), "--quant", "q8_0")
    assert result.returncode == 2
    assert error_lines(result) == [f"error: {target}: not a folder (it is a regular file)"]


def test_read_only_outdir_and_store(tiny_checkpoint: Path, read_only_folder: Path) -> None:
    result = run_cli("convert", str(tiny_checkpoint), "--outdir", str(read_only_folder), "--quant", "q8_0")
    assert result.returncode == 2
    assert error_lines(result) == [f"error: {read_only_folder}: cannot write here: Read-only file system"]
    store = subprocess.run(
        [MLLM_CPU, "convert", "--synthetic", "tiny", "--store"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLLM_CPU_HOME": str(read_only_folder)},
    )
    assert store.returncode == 2
    models = read_only_folder / "models"
    assert error_lines(store) == [f"error: {models}: cannot create the folder: Read-only file system"]


@pytest.mark.parametrize("quant", ["f16", "q4_0"])
def test_full_disk_is_one_line_and_no_partial_file(quant: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE) makes writes fail as on a full disk."""
    outdir = tmp_path / "out"
    limit = 500_000

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [MLLM_CPU, "convert", str(tiny_checkpoint), "--outdir", str(outdir), "--quant", quant],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert result.returncode == 2, result.stderr
    [line] = [line for line in error_lines(result) if line.startswith("error:")]
    assert (
        line == error_lines(result)[-1] and line.startswith(f"error: {outdir}/") and line.endswith(": File too large")
    )
    assert "Traceback" not in result.stderr
    assert files_in(outdir) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: room for the tiny checkpoint's F32 file (3.6 MiB) and not much more."""
    with tmpfs_mount(tmp_path / "small-disk", "size=6m") as folder:
        yield folder


def _fill(folder: Path, leave_bytes: int) -> None:
    stats = os.statvfs(folder)
    with (folder / "filler").open("wb") as handle:
        handle.write(bytes(stats.f_bavail * stats.f_frsize - leave_bytes))


def test_quantizer_on_a_full_disk_names_the_file(tiny_checkpoint: Path, small_disk: Path) -> None:
    """llama.cpp says only "basic_ios::clear: iostream error"; the line says which file and why."""
    first = run_cli("convert", str(tiny_checkpoint), "--outdir", str(small_disk), "--quant", "f32")
    assert first.returncode == 0, first.stderr
    _fill(small_disk, 200_000)
    result = run_cli("convert", str(tiny_checkpoint), "--outdir", str(small_disk), "--quant", "f32,q4_k_m")
    assert result.returncode == 2, result.stderr
    target = small_disk / "MobileLLM-R1-tiny-936K-Q4_K_M.gguf"
    assert error_lines(result)[-1] == f"error: {target}: No space left on device"
    assert files_in(small_disk) == ["MobileLLM-R1-tiny-936K-F32.gguf", "filler"]


def test_quantizer_past_a_file_size_limit_names_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    first = run_cli("convert", str(tiny_checkpoint), "--outdir", str(outdir), "--quant", "f32")
    assert first.returncode == 0, first.stderr
    kept = files_in(outdir)
    limit = 200_000  # the F32 file is kept: only the quantizer writes

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [MLLM_CPU, "convert", str(tiny_checkpoint), "--outdir", str(outdir), "--quant", "f32,q4_0"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert result.returncode == 2, result.stderr
    assert error_lines(result)[-1] == f"error: {outdir / 'MobileLLM-R1-tiny-936K-Q4_0.gguf'}: File too large"
    assert files_in(outdir) == kept


def test_synthetic_on_a_full_disk_names_the_folder(small_disk: Path) -> None:
    result = run_cli("convert", "--synthetic", "tiny", "--outdir", str(small_disk), "--quant", "f16")
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"error: {small_disk / 'MobileLLM-R1-tiny-synthetic'}: No space left on device"]
    assert files_in(small_disk) == []


def test_name_with_a_path_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli(
        "convert", str(tiny_checkpoint), "--outdir", str(tmp_path / "out"), "--quant", "q8_0", "--name", "../../x"
    )
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: --name '../../x': give a plain name (no '/', '\\', leading '.' or control characters)"
    ]
    assert files_in(tmp_path / "out") == [] and not list(tmp_path.parent.glob("*.gguf"))
    for name in (".hidden", "a\\b", "tab\tname", " "):
        with pytest.raises(InputError, match="give a plain name"):
            load_checkpoint(tiny_checkpoint, name)


def test_bad_config_value_names_the_key(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": "abc"}))
    result = run_cli("convert", str(folder), "--outdir", str(tmp_path / "out"), "--quant", "q8_0")
    assert result.returncode == 2
    assert error_lines(result) == [
        f'error: {folder / "config.json"}: hidden_size must be a positive integer, got "abc"'
    ]
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_hidden_layers", -1, "num_hidden_layers must be a positive integer, got -1"),
        ("num_attention_heads", 1.5, "num_attention_heads must be a positive integer, got 1.5"),
        ("num_key_value_heads", True, "num_key_value_heads must be a positive integer, got true"),
        ("vocab_size", None, "vocab_size is missing"),
        ("rms_norm_eps", "tiny", 'rms_norm_eps must be a positive number, got "tiny"'),
        ("rope_theta", float("inf"), "rope_theta must be a positive number, got Infinity"),
    ],
)
def test_config_values_are_checked_by_key(key: str, value: object, message: str, tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(InputError) as error:
        spec_from_config({**config, key: value}, "config.json")
    assert str(error.value) == f"config.json: {message}"
