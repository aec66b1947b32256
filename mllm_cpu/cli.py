"""The `mllm-cpu` command line: a thin typer layer over the package's functions."""

from __future__ import annotations

import os
import sys

from mllm_cpu import kernels
from mllm_cpu.core.errors import EXIT_INPUT, EXIT_INTERRUPTED, InputError, os_error_message

try:  # Ctrl-C while the libraries load is still an interruption, not a traceback
    import typer
    from rich.text import Text

    from mllm_cpu.commands.bench import bench
    from mllm_cpu.commands.chat import chat
    from mllm_cpu.commands.convert import convert
    from mllm_cpu.commands.doctor import doctor
    from mllm_cpu.commands.models import info, models
    from mllm_cpu.commands.pull import pull
    from mllm_cpu.commands.quality import quality
    from mllm_cpu.commands.repair import repair
    from mllm_cpu.commands.rm import rm
    from mllm_cpu.commands.serve import serve
    from mllm_cpu.commands.solve import solve
    from mllm_cpu.console import err
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    sys.exit(EXIT_INTERRUPTED)

app = typer.Typer(add_completion=False, help="Run Meta's MobileLLM-R1 reasoning models on CPUs with llama.cpp.")
app.command()(convert)
app.command()(bench)
app.command()(quality)
app.command()(doctor)
app.command()(solve)
app.command()(chat)
app.command()(models)
app.command()(info)
app.command()(serve)
app.command()(repair)
app.command()(pull)
app.command()(rm)


@app.callback(invoke_without_command=True)
def root(context: typer.Context) -> None:
    """Run Meta's MobileLLM-R1 reasoning models on CPUs with llama.cpp."""
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())


def _fail(message: str, code: int) -> None:
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console entry point; the one place that maps failures to exit codes.

    Bad input or environment (InputError, a file-system error, a usage error) -> one
    `error:` line and 2; Ctrl-C -> 130; a wrong answer -> 1 (the commands return it).
    """
    kernels.set_notice_sink(lambda line: err.print(Text.assemble(("note: ", "bold"), line), soft_wrap=True))
    try:
        code = app(standalone_mode=False)
    except InputError as error:
        _fail(str(error), EXIT_INPUT)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except OSError as error:
        _fail(os_error_message(error), EXIT_INPUT)
    except MemoryError:
        _fail("out of memory (try a smaller model, quant or --ctx)", EXIT_INPUT)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as error:
        context = getattr(error, "ctx", None)
        where = f" (see `{context.command_path} --help`)" if context is not None else ""
        _fail(f"{error.format_message()}{where}", getattr(error, "exit_code", EXIT_INPUT) or EXIT_INPUT)
    if code == EXIT_INTERRUPTED:
        err.print("interrupted")
    sys.exit(code if isinstance(code, int) else 0)
