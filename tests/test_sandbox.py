import os
import time
from pathlib import Path

from mllm_cpu.sandbox import humaneval_test_code, run_python

ADD = "def add(a, b):\n    return a + b\n"


def test_prints_output() -> None:
    result = run_python("print('hello', 6 * 7)")
    assert result.ok
    assert result.returncode == 0
    assert result.stdout == "hello 42\n"
    assert result.error == ""
    assert not result.timed_out


def test_passing_asserts() -> None:
    assert run_python(ADD, tests="assert add(2, 3) == 5\nassert add(-1, 1) == 0").ok


def test_failing_assert() -> None:
    result = run_python(ADD, tests="assert add(2, 2) == 5")
    assert not result.ok
    assert result.returncode == 1
    assert result.error == "AssertionError"
    assert "assert add(2, 2) == 5" in result.stderr


def test_exception_summary_is_the_last_line() -> None:
    result = run_python("print(undefined_name)")
    assert not result.ok
    assert result.error == "NameError: name 'undefined_name' is not defined"


def test_humaneval_check() -> None:
    test = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
    assert humaneval_test_code(test, "add") == f"{test}\n\ncheck(add)\n"
    assert run_python(ADD, tests=humaneval_test_code(test, "add")).ok
    wrong = "def add(a, b):\n    return a * b\n"
    assert not run_python(wrong, tests=humaneval_test_code(test, "add")).ok


def test_endless_loop_is_killed_at_the_timeout() -> None:
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert result.timed_out
    assert not result.ok
    assert result.error == "timed out after 1 s"
    assert elapsed < 3.0


def test_memory_bomb_is_contained() -> None:
    result = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not result.ok
    assert "allocated" not in result.stdout
    assert result.error == "MemoryError"


def test_growing_list_is_contained() -> None:
    code = "x = []\nwhile True:\n    x.append(bytearray(10**6))"
    result = run_python(code, memory_mb=256, timeout_s=10.0)
    assert not result.ok
    assert not result.timed_out
    assert result.error == "MemoryError"


def test_stdin_is_at_end_of_file() -> None:
    result = run_python("print(input())")
    assert result.error == "EOFError: EOF when reading a line"


def test_environment_is_minimal() -> None:
    os.environ["MLLM_CPU_SANDBOX_SECRET"] = "leak"
    try:
        result = run_python("import os\nprint(sorted(os.environ))")
    finally:
        del os.environ["MLLM_CPU_SANDBOX_SECRET"]
    assert result.ok
    assert "MLLM_CPU_SANDBOX_SECRET" not in result.stdout
    assert "HOME" in result.stdout


def test_write_outside_the_temporary_directory_is_blocked(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')")
    assert not result.ok
    assert result.error.startswith("PermissionError: blocked by the sandbox")
    assert not target.exists()


def test_write_through_a_symlink_is_blocked(tmp_path: Path) -> None:
    code = f"import os\nos.symlink({str(tmp_path)!r}, 'out')\nopen('out/escaped.txt', 'w')"
    result = run_python(code)
    assert not result.ok
    assert not (tmp_path / "escaped.txt").exists()


def test_remove_and_rename_outside_are_blocked(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("data")
    for code in (
        f"import os\nos.remove({str(keep)!r})",
        f"import os\nos.rename({str(keep)!r}, 'stolen.txt')",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
    ):
        result = run_python(code)
        assert not result.ok, code
        assert "blocked by the sandbox" in result.error
    assert keep.read_text() == "data"


def test_processes_cannot_be_started(tmp_path: Path) -> None:
    target = tmp_path / "touched"
    for code in (
        f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])",
        f"import os\nos.system('touch {target}')",
        "import os\nos.fork()",
    ):
        result = run_python(code)
        assert not result.ok, code
        assert "blocked by the sandbox" in result.error
    assert not target.exists()


def test_files_inside_the_temporary_directory_work() -> None:
    code = (
        "import os, shutil, tempfile\n"
        "with open('data.txt', 'w') as f:\n"
        "    f.write('42')\n"
        "os.mkdir('sub')\n"
        "shutil.move('data.txt', 'sub/data.txt')\n"
        "print(open('sub/data.txt').read())\n"
        "with tempfile.NamedTemporaryFile() as t:\n"
        "    t.write(b'x')\n"
        "shutil.rmtree('sub')\n"
        "open('/dev/null', 'w').write('ignored')\n"
    )
    result = run_python(code)
    assert result.ok, result.stderr
    assert result.stdout == "42\n"


def test_temporary_directory_is_removed() -> None:
    result = run_python("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())")
    assert result.ok
    workdir = Path(result.stdout.strip())
    assert workdir.name.startswith("mllm-cpu-sandbox-")
    assert not workdir.exists()


def test_huge_output_is_limited_and_truncated() -> None:
    result = run_python("while True:\n    print('x' * 1000)", timeout_s=10.0)
    assert not result.ok
    assert not result.timed_out
    assert "File too large" in result.error
    assert len(result.stdout) < 100_000
    assert "characters omitted" in result.stdout
