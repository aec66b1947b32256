"""Generated code cannot reach C through ctypes, and its traceback shows only its own lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm_cpu.sandbox import run_python


@pytest.mark.parametrize(
    "code",
    [
        "import ctypes\nctypes.CDLL(None).system(b'touch {marker}')\n",
        "import ctypes.util\nimport ctypes\nctypes.CDLL(ctypes.util.find_library('c')).system(b'touch {marker}')\n",
        "import _ctypes\n_ctypes.dlopen(None)\n",
    ],
    ids=["ctypes CDLL", "ctypes find_library", "_ctypes dlopen"],
)
def test_ctypes_calling_libc_is_refused(code: str, tmp_path: Path) -> None:
    marker = tmp_path / "escaped"
    result = run_python(code.format(marker=marker))
    assert not result.ok
    assert result.error.startswith("PermissionError: blocked by the sandbox: ctypes.")
    assert not marker.exists()


def test_traceback_shows_only_the_code(tmp_path: Path) -> None:
    code = "def write():\n    open('/etc/mllm-cpu-test', 'w')\n\nwrite()\n"
    result = run_python(code)
    assert not result.ok
    assert 'File "<string>"' not in result.stderr
    assert "in hook" not in result.stderr and "in refuse" not in result.stderr
    frames = [line for line in result.stderr.splitlines() if line.strip().startswith("File ")]
    assert len(frames) == 2 and all("solution.py" in frame for frame in frames)
    assert result.stderr.rstrip().endswith("PermissionError: blocked by the sandbox: writing /etc/mllm-cpu-test")


def test_chained_exceptions_keep_both_parts() -> None:
    result = run_python("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    raise ValueError('bad') from e\n")
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "direct cause" in result.stderr and result.error == "ValueError: bad"
    assert 'File "<string>"' not in result.stderr


def test_exit_status_of_the_code_is_kept() -> None:
    assert run_python("import sys\nsys.exit(3)\n").returncode == 3
