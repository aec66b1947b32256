"""The `mllm-cpu` command line: a thin typer layer over the package's functions."""

from __future__ import annotations

import sys

import typer
from rich.text import Text

from mllm_cpu.commands.bench import bench
from mllm_cpu.commands.chat import chat
from mllm_cpu.commands.convert import convert
from mllm_cpu.commands.doctor import doctor
from mllm_cpu.commands.models import info, models
from mllm_cpu.commands.solve import solve
from mllm_cpu.console import err
from mllm_cpu.core.errors import InputError

app = typer.Typer(add_completion=False, help="Run Meta's MobileLLM-R1 reasoning models on CPUs with llama.cpp.")
app.command()(convert)
app.command()(bench)
app.command()(doctor)
app.command()(solve)
app.command()(chat)
app.command()(models)
app.command()(info)


@app.callback(invoke_without_command=True)
def root(context: typer.Context) -> None:
    """Run Meta's MobileLLM-R1 reasoning models on CPUs with llama.cpp."""
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())


def _fail(message: str, code: int) -> None:
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console entry point: one error line and exit 2 on bad input or usage, 130 on Ctrl-C."""
    try:
        code = app(standalone_mode=False)
    except InputError as error:
        _fail(str(error), 2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except typer.TyperException as error:
        context = getattr(error, "ctx", None)
        where = f" (see `{context.command_path} --help`)" if context is not None else ""
        _fail(f"{error.format_message()}{where}", getattr(error, "exit_code", 2) or 2)
    if code == 130:
        err.print("interrupted")
    sys.exit(code if isinstance(code, int) else 0)
