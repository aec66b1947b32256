"""Child processes import the installed package, not a `mllm_cpu/` folder in the current directory.

A user who runs the README's commands from a checkout of this repository has the source
folder `mllm_cpu/` (without `convert/` or `bench/` inside) in the working directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def regular_install(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`mllm-cpu` of a Python with this package installed as `pip install .` does (not editable).

    A new virtualenv sees the test environment's packages through a path file, which adds
    the folder without running the editable install's import hook inside it.
    """
    venv = tmp_path_factory.mktemp("regular") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(
        subprocess.check_output(
            [venv / "bin" / "python", "-c", "import site; print(site.getsitepackages()[0])"], text=True
        ).strip()
    )
    (site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return [str(venv / "bin" / "python"), str(site / "bin" / "mllm-cpu")]


@pytest.fixture
def checkout_like_folder(tmp_path: Path) -> Path:
    """A working directory holding a `mllm_cpu` package that lacks the converter and the bench."""
    package = tmp_path / "work" / "mllm_cpu"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Not the installed package."""\n')
    return package.parent


def _run(mllm_cpu: list[str], folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The regular install's `mllm-cpu`, run in `folder`."""
    return subprocess.run([*mllm_cpu, *args], cwd=folder, capture_output=True, text=True, timeout=300)


def test_the_quantizer_child_runs_from_a_checkout(
    regular_install: list[str], tiny_checkpoint: Path, checkout_like_folder: Path
) -> None:
    out = checkout_like_folder / "out"
    result = _run(
        regular_install, checkout_like_folder, "convert", str(tiny_checkpoint), "--quant", "q4_0", "--outdir", str(out)
    )
    assert result.returncode == 0, result.stderr
    files = list(out.glob("*.gguf"))
    assert len(files) == 1 and files[0].name.endswith("-Q4_0.gguf"), files


def test_the_memory_probe_child_runs_from_a_checkout(
    regular_install: list[str], synthetic_tiny_gguf: Path, checkout_like_folder: Path
) -> None:
    result = _run(
        regular_install,
        checkout_like_folder,
        "bench",
        str(synthetic_tiny_gguf),
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--no-bandwidth",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    memory = json.loads(result.stdout)["models"][0]["memory"]
    assert memory, "the memory probe reported nothing"
