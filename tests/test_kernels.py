"""llama.cpp's AMX kernels kept out where they fault, and files llama.cpp aborts on refused in one line.

Where the machine has AMX (this project's CI machine does, and its AMX path segfaults), the whole
suite is the real test of the fallback: every quantized model in it loads through the same decision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.arithmetic_task import problems, render_prompt, trained_pair
from helpers.cli_runner import MLLM_CPU, error_lines, run_cli
from helpers.small_gguf import rewrite_gguf
from mllm_cpu.bench import first_load
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.core.errors import InputError
from mllm_cpu.kernels import AMX, prepare_kernels
from mllm_cpu.load_check import check_first_load

GREEDY_CHILD = """
import json, sys
from mllm_cpu.bench.llama_session import load_model
from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.kernels import prepare_kernels
engine = Engine(sys.argv[1], threads=1)
greedy = SamplingOptions(temperature=0.0, top_k=1, max_tokens=60, seed=0)
tokens = [engine.generate(prompt, greedy, reuse_prefix=False).token_ids for prompt in json.loads(sys.argv[2])]
buffers = sorted(load_model(sys.argv[1]).buffers.sizes_mib["model"])
print(json.dumps({"tokens": tokens, "buffers": buffers, "used": prepare_kernels().used}))
"""


@pytest.fixture(scope="module")
def quantized_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained arithmetic model at Q4_0: shapes that both the AMX and the CPU_REPACK kernels take."""
    folder = trained_pair()["target"]
    return convert_checkpoint(folder, parse_quant_list("q4_0"), tmp_path_factory.mktemp("q4"))[0].summary.path


def _greedy(path: Path, prompts: list[str], amx: str | None) -> dict[str, list]:
    env = {key: value for key, value in os.environ.items() if key != "MLLM_CPU_AMX"}
    if amx is not None:
        env["MLLM_CPU_AMX"] = amx
    done = subprocess.run(
        [sys.executable, "-c", GREEDY_CHILD, str(path), json.dumps(prompts)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_forced_fallback_gives_the_normal_paths_greedy_tokens_with_repacked_kernels(quantized_target: Path) -> None:
    prompts = [render_prompt(item.question) for item in problems(5, seed=11)]
    normal = _greedy(quantized_target, prompts, amx=None)
    forced = _greedy(quantized_target, prompts, amx="off")
    assert all(len(tokens) > 10 for tokens in normal["tokens"])
    assert forced["tokens"] == normal["tokens"]
    assert AMX not in forced["used"] and "AMX" not in forced["buffers"]
    # the other repacked kernels stay: the Q4_0 weights are repacked for this CPU's SIMD
    assert "CPU_REPACK" in forced["buffers"]


def test_doctor_reports_the_kernel_choice_and_why(tmp_path: Path) -> None:
    env = {**os.environ, "MLLM_CPU_CACHE": str(tmp_path / "cache")}
    forced = json.loads(_doctor(env | {"MLLM_CPU_AMX": "off"}).stdout)["kernels"]
    offered = AMX in forced["offered"]  # a build for a CPU without AMX has nothing to force off
    expected = "MLLM_CPU_AMX=off" if offered else "this llama.cpp build has no AMX kernels for this CPU"
    assert forced["setting"] == "off" and forced["reason"] == expected
    assert not forced["amx"] and AMX not in forced["used"]
    assert set(forced["used"]) == set(forced["offered"]) - {AMX}

    first = _doctor(env)
    probed = json.loads(first.stdout)["kernels"]
    again = json.loads(_doctor(env).stdout)["kernels"]
    assert probed["setting"] == "auto" and probed["reason"] == again["reason"]
    if AMX in probed["offered"]:
        # decided by the probe once, then read from the cache: the second run probes nothing
        assert probed["probe_seconds"] > 0 and again["probe_seconds"] is None
        assert list((tmp_path / "cache" / "kernels").glob("amx-*.json"))
        assert probed["reason"].startswith("a test decode")
        if not probed["amx"]:
            notes = [line for line in first.stderr.splitlines() if line.startswith("note: ")]
            assert len(notes) == 1 and "AMX kernels fail on this CPU" in notes[0]
            assert not any(line.startswith("note: ") for line in _doctor(env).stderr.splitlines())
    else:
        assert probed["reason"] == "this llama.cpp build has no AMX kernels for this CPU"


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([MLLM_CPU, "doctor", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_a_bad_amx_setting_is_one_line() -> None:
    env = {**os.environ, "MLLM_CPU_AMX": "maybe"}
    done = subprocess.run([MLLM_CPU, "doctor"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert error_lines(done) == ["error: MLLM_CPU_AMX must be one of auto, on, off, got 'maybe'"]


@pytest.fixture(scope="module")
def aborting_file(synthetic_tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama.cpp's own MobileLLM-R1 conversion (llama4, no q/k norm tensors) with one expert instead of
    zero: llama.cpp aborts on it (GGML_ASSERT in its graph code) on every CPU."""
    counts = {"expert_count": 1, "expert_used_count": 1, "expert_feed_forward_length": 256}
    counts["interleave_moe_layer_step"] = 0
    changes = {"general.architecture": "llama4", "llama4.attention.sliding_window": 0}
    changes |= {f"llama4.{key}": value for key, value in counts.items()}
    changes |= dict.fromkeys(("mllm_cpu.source_architecture", "mllm_cpu.source_label"))
    target = tmp_path_factory.mktemp("abort") / "one-expert.gguf"
    return rewrite_gguf(synthetic_tiny_gguf, target, changes, drop_tensors=("attn_q_norm", "attn_k_norm"))


def test_an_abort_inside_llama_cpp_is_one_error_and_the_verdict_is_cached(
    aborting_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLLM_CPU_CACHE", str(tmp_path / "cache"))
    choice = prepare_kernels()
    with pytest.raises(InputError) as raised:
        check_first_load(aborting_file, choice)
    message = str(raised.value)
    assert message.startswith(f"{aborting_file}: llama.cpp aborts on this file: GGML_ASSERT(")
    assert "(llama-graph.cpp:" in message and "\n" not in message
    verdicts = list((tmp_path / "cache" / "files").glob("*.json"))
    assert len(verdicts) == 1 and json.loads(verdicts[0].read_text())["aborts"] is True

    # the second time no child runs: the verdict is read back
    monkeypatch.setattr("mllm_cpu.load_check.run_child", _no_child)
    with pytest.raises(InputError) as again:
        check_first_load(aborting_file, choice)
    assert str(again.value) == message


def _no_child(*args: object, **kwargs: object) -> None:
    raise AssertionError("the cached verdict should have been used")


def test_a_sound_file_passes_once_and_is_then_cached(synthetic_tiny_gguf: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLLM_CPU_CACHE", str(tmp_path / "cache"))
    first = check_first_load(synthetic_tiny_gguf, prepare_kernels())
    second = check_first_load(synthetic_tiny_gguf, prepare_kernels())
    assert not first.cached and second.cached


@pytest.mark.parametrize("command", ["solve", "bench"])
def test_commands_on_a_file_llama_cpp_aborts_on_say_one_line(aborting_file: Path, command: str) -> None:
    args = ["solve", "What is 1 + 1?", "--model"] if command == "solve" else ["bench", "-p", "8", "-n", "4", "-r", "1"]
    result = run_cli(*args, str(aborting_file))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(aborting_file) in lines[0]


def test_the_guard_cost_bench_measures_each_step_from_an_empty_cache(
    synthetic_tiny_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench/first_load.py`: the cold check pays a child's load and decode, the cached one only a read."""
    assert first_load.main([str(synthetic_tiny_gguf), "--rounds", "1", "--json"]) == 0
    times = json.loads(capsys.readouterr().out)
    assert list(times) == list(first_load.STEPS) and all(len(values) == 1 for values in times.values())
    assert times["cached"][0] < times["check"][0]  # a read against a child process (figures: the bench)
