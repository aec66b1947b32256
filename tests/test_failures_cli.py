"""The CLI's failure paths: exit codes from one place, one error line, Ctrl-C at start-up,
bounded options, unwritable outputs, checkpoint folders as --model, and the synthetic
tokenizer's readable text. Real processes and signals where the behaviour is about them."""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.checkpoints import TINY, build_checkpoint
from helpers.cli_runner import MLLM_CPU, files_in, run_cli
from helpers.read_only import read_only_mount
from mllm_cpu.bench.report import caption, speed_rows
from mllm_cpu.bench.runner import BenchOptions, run_benchmark
from mllm_cpu.cli import COMMANDS, main
from mllm_cpu.convert.synthetic import BOS_ID, EOS_ID, EOT_ID, LLAMA3_REGULAR_TOKENS, LLAMA3_VOCAB


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    with read_only_mount(tmp_path / "read-only") as folder:
        yield folder


def _main(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run the console entry point in-process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["mllm-cpu", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_ctrl_c_during_start_up_is_130_without_traceback(synthetic_tiny_gguf: Path) -> None:
    """SIGINT while `solve` still imports its libraries and loads the model.

    The start takes a few tenths of a second, so the signal is sent at several moments in it: each
    run that it reaches ends with exit 130 and the one line `interrupted` (a run that finished
    first is skipped over), and at least the earliest ones must be reached."""
    command = [MLLM_CPU, "solve", "1+1", "--model", str(synthetic_tiny_gguf), "--max-tokens", "4"]
    interrupted = 0
    for delay in (0.08, 0.12, 0.16, 0.2, 0.3):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        if process.returncode == 0:
            continue
        assert process.returncode == 130, (delay, stderr)
        assert stderr.strip() == "interrupted", (delay, stderr)
        interrupted += 1
    assert interrupted >= 2


def test_error_after_progress_started_has_no_blank_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["convert", str(tiny_checkpoint), "--outdir", str(tmp_path / "out"), "--name", "../x"]
    code, stderr = _main(argv, capsys, monkeypatch)
    assert code == 2
    assert stderr.startswith("error: --name '../x'") and stderr.count("\n") == 1
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_text("hi")
    code, stderr = _main(["bench", str(not_gguf), "--no-bandwidth"], capsys, monkeypatch)
    assert code == 2
    assert stderr.startswith(f"error: {not_gguf}: not a GGUF file") and stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threads", "0", "--threads must be at least 1, got 0"),
        ("--threads", "999", f"--threads must be at most {os.cpu_count()}, got 999"),
        ("--temperature", "-0.5", "--temperature must be at least 0, got -0.5"),
        ("--temperature", "nan", "--temperature must be a finite number, got nan"),
        ("--top-p", "2", "--top-p must be at most 1, got 2.0"),
        ("--top-p", "0", "--top-p must be more than 0, got 0.0"),
        ("--top-k", "-1", "--top-k must be at least 0, got -1"),
        ("--min-p", "-0.5", "--min-p must be at least 0, got -0.5"),
        ("--repeat-penalty", "0", "--repeat-penalty must be more than 0, got 0.0"),
        ("--max-tokens", "0", "--max-tokens must be at least 1, got 0"),
        ("--check", "", "--check is empty: give the expected answer, e.g. --check 42"),
        ("--check", "  ", "--check is empty: give the expected answer, e.g. --check 42"),
    ],
)
def test_out_of_range_options_are_one_line(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, stderr = _main(["solve", "What is 2+2?", option, value], capsys, monkeypatch)
    assert (code, stderr) == (2, f"error: {message}\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "2+2", "--max-tokens", "lots"], "Invalid value for '--max-tokens': 'lots' is not an integer."),
        (["solve", "2+2", "--max-tokens", "1.5"], "Invalid value for '--max-tokens': '1.5' is not an integer."),
        (["chat", "--temperature", "hot"], "Invalid value for '--temperature' / '--temp': 'hot' is not a number."),
        (["serve", "--parallel", "two"], "Invalid value for '--parallel'"),  # bounded: typer's own reading
        (["serve", "--parallel", "99"], "Invalid value for '--parallel'"),
    ],
)
def test_values_that_are_not_their_type_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, stderr = _main(args, capsys, monkeypatch)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith(f"error: {message}"), stderr
    assert f"(see `mllm-cpu {args[0]} --help`)" in stderr


def test_plain_values_arrive_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path, an int, a float and repeated strings read without typer's validators come in as their types:
    the checks after parsing see a missing --file as a path and 0.5 as a float (their messages say so)."""
    code, stderr = _main(["solve", "--file", str(tmp_path / "none.jsonl"), "-m", "a", "-m", "b"], capsys, monkeypatch)
    assert code == 2 and f"{tmp_path / 'none.jsonl'}: no such file" in stderr, stderr
    code, stderr = _main(["chat", "--top-p", "1.5"], capsys, monkeypatch)
    assert (code, stderr) == (2, "error: --top-p must be at most 1, got 1.5\n")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_names_values_as_click_does(command: str) -> None:
    """Options show TEXT, INTEGER, FLOAT or PATH and arguments their upper-case names, not typer 0.29's
    `<list[str]>` and `{names}...`."""
    result = run_cli(command, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"Usage: mllm-cpu {command} [OPTIONS]"), result.stderr
    assert re.findall(r"<[a-z][^>]*>|\{[a-z_]+\}", result.stdout) == []


def test_help_and_errors_name_arguments_alike() -> None:
    shown = run_cli("rm", "--help").stdout
    assert shown.startswith("Usage: mllm-cpu rm [OPTIONS] NAMES...\n") and "\n  NAMES...  Model names" in shown
    assert run_cli("convert", "--help").stdout.startswith("Usage: mllm-cpu convert [OPTIONS] [MODEL_DIR]\n")
    missing = run_cli("rm")
    assert (missing.returncode, missing.stderr) == (
        2,
        "error: Missing argument 'NAMES...'. (see `mllm-cpu rm --help`)\n",
    )
    assert "--port INTEGER " in run_cli("serve", "--help").stdout


def test_out_of_range_option_in_a_real_process() -> None:
    result = run_cli("chat", "--top-p", "2")
    assert result.returncode == 2
    assert result.stderr == "error: --top-p must be at most 1, got 2.0\n"


def test_unwritable_outputs_are_one_line_before_any_work(
    read_only_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No model is needed: the output is checked before anything is loaded or measured."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    cases = [
        (
            ["solve", "--file", str(problems), "--out", str(tmp_path)],
            f"{tmp_path}: is a folder, not a regular file: results are appended to a regular file and resumed "
            "from it (/dev/stdout or /dev/null take them without resuming)",
        ),
        (
            ["solve", "--file", str(problems), "--out", str(read_only_folder / "r.jsonl")],
            f"--out {read_only_folder / 'r.jsonl'}: cannot write: Read-only file system",
        ),
        (
            ["bench", "--synthetic", "tiny", "--json", "--out", str(tmp_path)],
            f"--out {tmp_path}: is a folder, not a file",
        ),
    ]
    for args, message in cases:
        assert _main(args, capsys, monkeypatch) == (2, f"error: {message}\n"), args
    result = run_cli("bench", "--synthetic", "tiny", "--out", str(read_only_folder / "b.json"))
    message = f"--out {read_only_folder / 'b.json'}: cannot write: Read-only file system"
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")
    assert files_in(read_only_folder) == []


def test_full_disk_during_a_batch_keeps_no_half_record(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE (the file-size limit) makes the append fail as a full disk would."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    results = tmp_path / "results.jsonl"
    result = subprocess.run(
        [MLLM_CPU, "solve", "--file", str(problems), "--out", str(results), "--model", str(synthetic_tiny_gguf)]
        + ["--max-tokens", "2", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100)),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == f"error: {results}: File too large"
    assert "Traceback" not in result.stderr
    assert not results.exists()  # created for the run, and removed again as nothing was saved in it


def test_file_system_errors_map_to_exit_2_with_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError that reaches the entry point is one line naming the path, never a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MLLM_CPU_HOME", str(blocker))
    code, stderr = _main(["convert", "--synthetic", "tiny", "--store"], capsys, monkeypatch)
    assert code == 2
    assert stderr == f"error: {blocker / 'models'}: cannot create the folder: Not a directory\n"


def test_checkpoint_folder_as_model_is_converted_once_by_content(isolated_store: Path, tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path / "MobileLLM-R1-tiny", TINY)
    info = run_cli("info", str(folder), "--json")
    assert info.returncode == 0, info.stderr
    assert files_in(isolated_store) == [], "info must not write into the store"
    assert "converted to a temporary file, now removed" in info.stderr

    first = run_cli("solve", "2+2?", "--model", str(folder), "--max-tokens", "1", "--threads", "1")
    assert first.returncode == 0, first.stderr
    assert f"converting {folder} to Q4_K_M once" in first.stderr and "llama.cpp quantizer" in first.stderr
    [converted] = (isolated_store / "converted").glob("*/*.gguf")
    info_again = run_cli("info", str(folder), "--json")
    assert info_again.returncode == 0 and "temporary" not in info_again.stderr and "converting" not in info_again.stderr
    assert str(converted) in info_again.stdout

    build_checkpoint(folder, TINY, seed=1)  # same names and sizes, new weights
    changed = run_cli("solve", "2+2?", "--model", str(folder), "--max-tokens", "1", "--threads", "1")
    assert changed.returncode == 0, changed.stderr
    assert f"converting {folder} to Q4_K_M once" in changed.stderr
    assert f"removed the old conversion {converted.parent}" in changed.stderr
    [reconverted] = (isolated_store / "converted").glob("*/*.gguf")
    assert reconverted.parent != converted.parent and not converted.exists()


def test_noisy_samples_are_marked(synthetic_tiny_gguf: Path) -> None:
    options = BenchOptions(prompts=[16], gens=[4], threads=[1], repetitions=2, n_ctx=256, bandwidth=False)
    run = run_benchmark([synthetic_tiny_gguf], options)
    steady = run.results[0]
    run.results.append(dataclasses.replace(steady, test="tg4 (spread)", stdev_ts=2 * steady.avg_ts))
    columns, rows = speed_rows(run)
    cells = {row[columns.index("test")]: row[columns.index("t/s")] for row in rows}
    assert cells["tg4 (spread)"].endswith(" noisy")
    assert run.results[-1].to_dict()["noisy"] is True
    assert "noisy: the repetitions' sd exceeds their mean" in caption(run)


def test_run_benchmark_in_a_script_without_main_guard_fails_clearly(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    script = tmp_path / "measure.py"
    script.write_text(
        "from pathlib import Path\n"
        "from mllm_cpu.bench.runner import BenchOptions, run_benchmark\n"
        "options = BenchOptions(prompts=[8], gens=[2], threads=[1], repetitions=1, n_ctx=256)\n"
        f"print(run_benchmark([Path({str(synthetic_tiny_gguf)!r})], options))\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert 'must do so under `if __name__ == "__main__":`' in result.stderr.splitlines()[-1]


def test_synthetic_tokens_are_printable_text(synthetic_tiny_gguf: Path) -> None:
    import llama_cpp

    model = llama_cpp.Llama(str(synthetic_tiny_gguf), vocab_only=True, verbose=False)
    assert model.n_vocab() == LLAMA3_VOCAB
    assert (model.token_bos(), model.token_eos()) in ((BOS_ID, EOT_ID), (BOS_ID, EOS_ID))
    texts = [model.detokenize([token]).decode("utf-8") for token in range(256, LLAMA3_REGULAR_TOKENS)]
    unprintable = [text for text in texts if not text.isprintable() or not text.strip()]
    assert unprintable == []
    words = [text for text in texts if text.strip().isalpha()]
    assert len(words) > 0.95 * len(texts)
    printable_bytes = [chr(b) for b in range(32, 127)]
    assert [
        model.detokenize([model.tokenize(c.encode(), add_bos=False, special=False)[0]]).decode()
        for c in printable_bytes
    ] == printable_bytes
