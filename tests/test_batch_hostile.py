"""Batches on hostile paths and files: devices, FIFOs, folders, huge lines, text that is not text,
problems longer than the context, and two runs on one results file.

Every CLI run here is a real child process under a 2 GiB address-space limit (so a read that is
not bounded fails the test, not the machine) and a time limit (so a hang fails it too).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from helpers.cli_runner import MLLM_CPU
from mllm_cpu.batch import NotResumable, read_results
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import GIB, MIB
from mllm_cpu.problems import load_problems

MEMORY_LIMIT = 2 * GIB
HELD_WHOLE = 64 * MIB
"""More peak memory than a bounded read explains; a 200 MB line held whole adds several times that."""
NOT_RESULTS = (
    "not a regular file: results are appended to a regular file and resumed from it "
    "(/dev/stdout or /dev/null take them without resuming)"
)
FLAGS = ("--threads", "1", "--seed", "1")
KERNEL_NOTE = "note: llama.cpp's AMX kernels"


@dataclass(frozen=True)
class Run:
    """A finished CLI child: exit status, output, and its own peak resident memory."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss: int

    @property
    def error_lines(self) -> list[str]:
        """The non-empty stderr lines, less the one-time note of the machine's llama.cpp kernels."""
        return [line for line in self.stderr.splitlines() if line.strip() and not line.startswith(KERNEL_NOTE)]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_bounded(*args: str, timeout: float = 120, stdout: IO[Any] | None = None) -> Run:
    """Run `mllm-cpu ARGS` under MEMORY_LIMIT; kill it and fail the test after `timeout` seconds.

    The child is reaped with wait4, which gives its own peak RSS. Output goes to temporary
    files (no pipe fills up while this polls); `stdout` replaces the captured stdout.
    """
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [MLLM_CPU, *args], stdin=stdin, stdout=stdout or out, stderr=err, preexec_fn=_limit_memory
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                process.returncode = -signal.SIGKILL
                pytest.fail(f"mllm-cpu {' '.join(args)} did not end within {timeout} s")
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout_text, stderr_text = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return Run(process.returncode, stdout_text, stderr_text, usage.ru_maxrss * 1024)


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint at F16, which decodes on every CPU."""
    outdir = tmp_path_factory.mktemp("hostile-model")
    return convert_checkpoint(tiny_checkpoint, parse_quant_list("f16"), outdir)[0].summary.path


def _problems(path: Path, count: int, long: dict[int, int] | None = None) -> Path:
    """`count` GSM8K-style problems q0, q1, ...; `long` maps a number to the repeats of a phrase that
    makes that problem far too long for a small context."""
    lines = []
    for i in range(count):
        repeats = (long or {}).get(i)
        question = "How many? " + "seven apples and " * repeats if repeats else f"What is {i} + {i}?"
        lines.append(json.dumps({"id": f"q{i}", "question": question, "answer": f"#### {2 * i}"}) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _solve(
    model: Path, problems: Path, *args: str, max_tokens: int = 8, timeout: float = 120, stdout: IO[Any] | None = None
) -> Run:
    """`solve --file PROBLEMS --model MODEL ARGS` on one thread, bounded (see run_bounded)."""
    command = ("solve", "--file", str(problems), "--model", str(model), *FLAGS, "--max-tokens", str(max_tokens))
    return run_bounded(*command, *args, timeout=timeout, stdout=stdout)


def _one_error(run: Run) -> str:
    """The one `error:` line of a run refused on its input (exit 2, nothing on stdout)."""
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert len(run.error_lines) == 1, run.stderr
    [line] = run.error_lines
    assert line.startswith("error: ")
    return line


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("/dev/full", "a character device"),
        ("/dev/zero", "a character device"),
        ("fifo", "a FIFO (named pipe)"),
        ("folder", "a folder"),
        ("socket", "a socket"),
    ],
)
def test_a_results_path_that_is_no_regular_file_is_one_line(model: Path, tmp_path: Path, kind: str, what: str) -> None:
    problems = _problems(tmp_path / "p.jsonl", 2)
    out = Path(kind) if kind.startswith("/dev/") else tmp_path / f"results-{kind}"
    with ExitStack() as stack:
        if kind == "fifo":
            os.mkfifo(out)
        elif kind == "folder":
            out.mkdir()
        elif kind == "socket":
            server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            server.bind(str(out))
        run = _solve(model, problems, "--out", str(out), timeout=60)
    assert _one_error(run) == f"error: {out}: is {what}, {NOT_RESULTS}"


def test_the_default_results_path_is_checked_too(model: Path, tmp_path: Path) -> None:
    problems = _problems(tmp_path / "p.jsonl", 2)
    default = tmp_path / f"p-results-{model.stem}.jsonl"
    os.mkfifo(default)
    run = _solve(model, problems, timeout=60)
    assert _one_error(run) == f"error: {default}: is a FIFO (named pipe), {NOT_RESULTS}"


def test_dev_null_and_dev_stdout_take_the_records_and_never_resume(model: Path, tmp_path: Path) -> None:
    problems = _problems(tmp_path / "p.jsonl", 3)
    for _ in range(2):
        discarded = _solve(model, problems, "--out", "/dev/null")
        assert discarded.returncode == 0, discarded.stderr
        assert "3 of 3 problems · /dev/null" in discarded.stdout and "resuming" not in discarded.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["p.jsonl"]

    piped = _solve(model, problems, "--out", "/dev/stdout")
    assert piped.returncode == 0, piped.stderr
    assert [record["id"] for record in _records(piped.stdout)] == ["q0", "q1", "q2"]
    assert "3 of 3 problems · /dev/stdout" in piped.stderr  # the summary moves out of the records' way

    with (tmp_path / "captured.jsonl").open("wb") as file:  # stdout redirected to a regular file
        redirected = _solve(model, problems, "--out", "/dev/stdout", "--json", stdout=file)
    assert redirected.returncode == 0, redirected.stderr
    records = _records((tmp_path / "captured.jsonl").read_text(encoding="utf-8"))
    assert [record["id"] for record in records] == ["q0", "q1", "q2"]
    assert records[0]["model"]["model"] == model.name
    assert '"finished": 3' in redirected.stderr

    with open("/dev/full", "wb") as full:
        no_space = _solve(model, problems, "--out", "/dev/stdout", stdout=full)
    assert no_space.returncode == 2
    assert no_space.error_lines[-1] == "error: /dev/stdout: No space left on device"


def test_a_200_mb_line_is_never_held_whole(model: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text('{"question": "a"}\n{"question": \n', encoding="utf-8")
    baseline = _solve(model, small)
    assert _one_error(baseline) == f"error: {small}:2: bad JSON: Expecting value"

    big = tmp_path / "big.jsonl"
    with big.open("wb") as file:
        file.write(b'{"question": "a"}\n{"question": "')
        chunk = b"x" * MIB
        for _ in range(200):
            file.write(chunk)
        file.write(b'"}\n')
    run = _solve(model, big)
    assert _one_error(run) == f"error: {big}:2: line longer than 1 MiB, the limit for one problem"
    assert run.peak_rss < baseline.peak_rss + HELD_WHOLE, (run.peak_rss, baseline.peak_rss)


def test_files_past_their_limits_are_refused_by_size(model: Path, tmp_path: Path) -> None:
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as file:
        file.truncate(10 * GIB)  # sparse: no disk is used, and a reader of it would run out of memory
    assert _one_error(_solve(model, huge)) == f"error: {huge}: larger than 256 MiB, the limit for a problems file"

    text = tmp_path / "problem.txt"
    text.write_bytes(b"What is 1 + 1? " * (MIB // 8))
    run = _solve(model, text)
    assert _one_error(run) == f"error: {text}: larger than 1 MiB, the limit for one problem"

    problems = _problems(tmp_path / "p.jsonl", 2)
    results = tmp_path / "results.jsonl"
    with results.open("wb") as file:
        file.truncate(2 * GIB)
    run = _solve(model, problems, "--out", str(results))
    assert _one_error(run) == (
        f"error: {results}: larger than 1 GiB, the limit for a results file to resume; "
        "choose another --out, or --force to set the file aside"
    )
    assert results.stat().st_size == 2 * GIB

    results.write_bytes(b"[" * (20 * MIB) + b"\n")
    run = _solve(model, problems, "--out", str(results))
    assert _one_error(run).startswith(f"error: {results}:1: line longer than 16 MiB, the limit for a results record")
    assert results.stat().st_size == 20 * MIB + 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"question": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at column 18)"),
        (b'{"question": "\\ud800 and more"}', "a lone surrogate \\ud800 in the text: not Unicode text"),
        (b'{"question": "a", "id": "\\udfff"}', "a lone surrogate \\udfff in the text: not Unicode text"),
        (b"[" * 100_000 + b"]" * 100_000, "bad JSON: nested too deeply"),
        (b'{"question": ' * 50_000, "bad JSON: nested too deeply"),
    ],
)
def test_a_problem_line_that_is_not_text_is_one_line_naming_it(
    model: Path, tmp_path: Path, line: bytes, reason: str
) -> None:
    problems = tmp_path / "p.jsonl"
    problems.write_bytes(b'{"question": "fine"}\n' + line + b"\n")
    with pytest.raises(InputError) as error:
        load_problems(problems)
    assert str(error.value) == f"{problems}:2: {reason}"
    assert _one_error(_solve(model, problems)) == f"error: {problems}:2: {reason}"


def test_fifos_devices_and_bad_text_as_input_files(model: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "problems.jsonl"
    os.mkfifo(fifo)
    assert _one_error(_solve(model, fifo)) == f"error: {fifo}: is a FIFO (named pipe), not a regular file"
    text_fifo = tmp_path / "problem.txt"
    os.mkfifo(text_fifo)
    assert _one_error(_solve(model, text_fifo)) == f"error: {text_fifo}: is a FIFO (named pipe), not a regular file"
    assert _one_error(_solve(model, Path("/dev/zero"))) == "error: /dev/zero: is a character device, not a regular file"
    assert _one_error(_solve(model, tmp_path)) == f"error: {tmp_path}: is a folder, not a regular file"

    tests = tmp_path / "tests.py"
    tests.write_bytes(b"\xffassert add(1, 2) == 3\n")
    problem = ("solve", "Write a Python function add(a, b).", "--model", str(model), *FLAGS, "--tests")
    assert _one_error(run_bounded(*problem, str(tests))) == f"error: {tests}: not UTF-8 text (byte 0xff at byte 1)"
    tests_fifo = tmp_path / "tests.fifo"
    os.mkfifo(tests_fifo)
    line = _one_error(run_bounded(*problem, str(tests_fifo)))
    assert line == f"error: {tests_fifo}: is a FIFO (named pipe), not a regular file"
    device = _one_error(run_bounded(*problem, "/dev/zero"))
    assert device == "error: /dev/zero: is a character device, not a regular file"


def test_a_problem_longer_than_the_context_is_recorded_failed_and_the_batch_goes_on(
    model: Path, tmp_path: Path
) -> None:
    """q1 is tokenized and found too long; q2 (340 KB) too, or refused by its length before it is tokenized."""
    problems = _problems(tmp_path / "p.jsonl", 4, long={1: 200, 2: 20_000})
    out = tmp_path / "results.jsonl"
    run = _solve(model, problems, "--out", str(out), "--ctx", "256")
    assert run.returncode == 0, run.stderr
    assert "4 of 4 problems" in run.stdout
    records = {record.id: record for record in read_results(out)}
    assert list(records) == ["q0", "q1", "q2", "q3"]
    failures = [records[i].failure for i in ("q1", "q2")]
    assert failures[0] is not None and failures[0].startswith("the prompt has ")
    assert failures[0].endswith("tokens; the context holds 256")
    assert failures[1] is not None and failures[1].startswith("the prompt has ") and "context holds" in failures[1]
    for number, failure in zip(("q1", "q2"), failures, strict=True):
        assert f"{number}: failed: {failure} (recorded; going on)" in run.stderr
        assert (records[number].correct, records[number].stop_reason, records[number].tokens) == (False, "context", 0)
    assert all(records[i].failure is None and records[i].tokens > 0 for i in ("q0", "q3"))

    before = out.read_bytes()
    again = _solve(model, problems, "--out", str(out), "--ctx", "256")
    assert again.returncode == 0, again.stderr
    assert "resuming: 4 of 4 problems already there (2 recorded as failed)" in again.stderr
    assert out.read_bytes() == before


def test_a_second_run_on_the_same_results_is_refused_while_the_first_holds_it(model: Path, tmp_path: Path) -> None:
    problems = _problems(tmp_path / "p.jsonl", 400)
    out = tmp_path / "results.jsonl"
    command = [MLLM_CPU, "solve", "--file", str(problems), "--model", str(model), *FLAGS, "--max-tokens", "64"]
    first = subprocess.Popen(
        [*command, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_limit_memory,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 2):
            assert first.poll() is None, "the first run ended before the second started"
            time.sleep(0.02)
        second = _solve(model, problems, "--out", str(out), max_tokens=64, timeout=60)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert _one_error(second) == (
            f"error: {out}: in use by another run (pid {first.pid}); wait for it to end, or choose another --out"
        )
    finally:
        first.kill()
        first.wait(timeout=30)

    finished = len(read_results(out))  # the killed run's lock ended with it
    assert 2 <= finished < 400
    resumed = _solve(model, problems, "--out", str(out), "--limit", str(finished + 2), max_tokens=64)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {finished} of {finished + 2} problems already there" in resumed.stderr
    assert [record.id for record in read_results(out)] == [f"q{i}" for i in range(finished + 2)]


def test_a_file_that_holds_no_records_is_left_as_it_was(tmp_path: Path) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(b'{"question": "mine"}\n{"question": "not finished, no newline')
    before = notes.read_bytes()
    with pytest.raises(NotResumable, match=r"notes\.jsonl:1: not a results record"):
        read_results(notes)
    assert notes.read_bytes() == before


@pytest.mark.parametrize("name", ["", "   "])
def test_rm_refuses_an_empty_name(model: Path, isolated_store: Path, name: str) -> None:
    store = isolated_store / "models"
    store.mkdir(exist_ok=True)
    shutil.copy(model, store)
    run = run_bounded("rm", name, timeout=60)
    assert _one_error(run) == f"error: an empty model name ({name!r}) names no model; give one from `mllm-cpu models`"
    assert [path.name for path in store.iterdir()] == [model.name]
