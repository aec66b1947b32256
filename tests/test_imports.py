"""Which heavy libraries each command imports: light commands start without llama.cpp, the clients or sympy.

Each command runs in a fresh interpreter that calls `mllm_cpu.cli.main()` under the command's
argv and, at exit, writes the names in `sys.modules` to a file. A case lists the heavy modules
that must be absent and, as a control that the check sees imports at all, those that must be
present. torch and transformers are test-only and absent from every case.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mllm_cpu.cli import COMMANDS, command_docstring

HEAVY = frozenset(
    {
        "llama_cpp",
        "openai",
        "huggingface_hub",
        "math_verify",
        "sympy",
        "numpy",
        "gguf",
        "pydantic",
        "markdown_it",
        "torch",
        "transformers",
    }
)
"""The libraries that cost start-up time (llama.cpp's library load, HTTP clients, sympy, numpy, gguf-py's
package, the pydantic typer validates with, the markdown_it of typer's rich help) or must never load.
`gguf.constants` alone (`core/gguf_constants.py`) is not gguf-py's package."""

CHILD = """
import atexit, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
atexit.register(lambda: out.write_text(json.dumps(sorted(sys.modules))))
sys.argv = ["mllm-cpu", *sys.argv[2:]]
from mllm_cpu.cli import main
main()
"""

FILE, ENDPOINT = "FILE", "ENDPOINT"
"""Arguments that stand for the tiny GGUF file and the endpoint stand-in's URL."""
_WRITES_GGUF = frozenset({"numpy", "gguf"})
HELP_IMPORTS = {
    **dict.fromkeys(("convert", "bench", "quality", "repair"), _WRITES_GGUF),
    "pull": _WRITES_GGUF | {"huggingface_hub"},
}
"""The heavy modules a command's `--help` imports (its module's own imports: gguf-py's writer and its numpy);
none for the others (`solve`, `chat` and `serve` import numpy only where tokens are picked)."""


@dataclass(frozen=True)
class Case:
    """A command line, its exit code, and the heavy modules it must not (and must) import."""

    args: tuple[str, ...]
    code: int = 0
    present: frozenset[str] = frozenset()

    @property
    def absent(self) -> frozenset[str]:
        """The heavy modules the command must not import."""
        return HEAVY - self.present


CASES = {
    "--help": Case(("--help",)),
    "models": Case(("models",)),
    "info FILE": Case(("info", FILE)),
    "info FILE --json": Case(("info", FILE, "--json")),
    **{f"{name} --help": Case((name, "--help"), present=HELP_IMPORTS.get(name, frozenset())) for name in COMMANDS},
    "solve -m FILE": Case(
        ("solve", "What is 2 + 2?", "-m", FILE, "--max-tokens", "2"), present=frozenset({"llama_cpp", "numpy"})
    ),
    "solve --endpoint": Case(
        ("solve", "What is 2 + 2?", "--endpoint", ENDPOINT), code=2, present=frozenset({"openai", "pydantic"})
    ),
}
"""Absent everywhere but where `present` says: llama_cpp and numpy (a model is loaded), huggingface_hub (pull),
openai and its pydantic (--endpoint); pydantic for no flag (typer's validators are not used); gguf-py's package
and numpy for no header read (`models`, `info`); math_verify and sympy (no case checks an answer); torch and
transformers never."""


class _NotFound(BaseHTTPRequestHandler):
    """Answers every request 404 (an error the client does not retry), so `--endpoint` fails at once."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"error": {"message": "not found"}}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.do_GET()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """The /v1 URL of an OpenAI-style stand-in on loopback that answers 404."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def imported_modules(args: list[str], code: int, folder: Path) -> set[str]:
    """The modules `mllm-cpu ARGS` has imported when it exits with `code` (run in `folder`,
    so that a `mllm_cpu/` folder of the checkout is not what it imports)."""
    out = folder / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), *args], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == code, done.stderr
    return set(json.loads(out.read_text()))  # a package's submodule is never there without the package


@pytest.mark.parametrize("name", list(CASES))
def test_command_imports_only_what_it_needs(
    name: str, synthetic_tiny_gguf: Path, endpoint: str, tmp_path: Path
) -> None:
    case = CASES[name]
    places = {FILE: str(synthetic_tiny_gguf), ENDPOINT: endpoint}
    modules = imported_modules([places.get(arg, arg) for arg in case.args], case.code, tmp_path)
    assert sorted(modules & case.absent) == [], f"mllm-cpu {name} imports them"
    assert sorted(case.present - modules) == [], f"mllm-cpu {name} does not import them (the check sees nothing)"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_list_reads_each_docstring_from_source(name: str) -> None:
    """The top-level help's command list (read without importing) says what the command's own help says."""
    entry = COMMANDS[name]
    function = getattr(importlib.import_module(f"mllm_cpu.commands.{entry.module}"), entry.function)
    assert command_docstring(name) == inspect.getdoc(function) != ""
