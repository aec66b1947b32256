"""The `mllm-cpu` command line: a thin typer layer over the package's functions.

Each command's module is imported only when that command runs (or shows its own help), so
`mllm-cpu --help`, `models`, `info FILE` or `rm` start without llama.cpp, the HTTP clients or
sympy (tests/test_imports.py checks it); the command list in the top-level help reads each
command's docstring from its source.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin

import typer
from rich.text import Text
from typer import _click as click  # typer vendors click; its groups take these types
from typer._coercion import RuntimeParam
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption, _TyperParameter
from typer.models import ParameterInfo

from mllm_cpu.commands.console import err
from mllm_cpu.core.errors import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    InputError,
    Terminated,
    os_error_message,
)
from mllm_cpu.core.notices import set_notice_sink

DEBUG_ENV = "MLLM_CPU_DEBUG"
"""Set to 1 to see the full traceback after a one-line error."""


@dataclass(frozen=True)
class CommandEntry:
    """Where a command's typer function lives: `mllm_cpu.commands.<module>.<function>`."""

    module: str
    function: str


COMMANDS: dict[str, CommandEntry] = {
    "convert": CommandEntry("convert", "convert"),
    "bench": CommandEntry("bench", "bench"),
    "quality": CommandEntry("quality", "quality"),
    "doctor": CommandEntry("doctor", "doctor"),
    "solve": CommandEntry("solve", "solve"),
    "chat": CommandEntry("chat", "chat"),
    "models": CommandEntry("models", "models"),
    "info": CommandEntry("models", "info"),
    "serve": CommandEntry("serve", "serve"),
    "repair": CommandEntry("repair", "repair"),
    "pull": CommandEntry("pull", "pull"),
    "rm": CommandEntry("rm", "rm"),
}
"""The commands, in the order the help lists them."""


class _QuickHelp(click.Command):
    """Mixed into the command classes: `--help` is False unless given, so typer needs no
    pydantic validator to read it (it builds one for any value that is not a bool)."""

    def get_help_option(self, ctx: click.Context) -> TyperOption | None:
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False
        return option


_PLAIN_TYPES: dict[Any, tuple[str, Callable[[str], Any], str]] = {
    str: ("a string", str, "TEXT"),
    int: ("an integer", int, "INTEGER"),
    float: ("a number", float, "FLOAT"),
    Path: ("a path", Path, "PATH"),
}
"""The value types read without pydantic, each with its name in an error, its conversion, and how the help
shows an option of it (as click does; typer 0.29 would show `<list[str]>`)."""


def _element_type(annotation: Any) -> Any:
    """The type of a parameter's values: `T` for `list[T]`, else the annotation."""
    return get_args(annotation)[0] if get_origin(annotation) is list else annotation


@dataclass(frozen=True)
class _PlainValue(RuntimeParam):
    """A str, int, float or Path value, or a list of one of them, read without pydantic.

    typer builds a pydantic validator for every parameter it reads, which costs a command tens of
    milliseconds before it starts; these types need none. A value that does not convert is
    typer's usage error, "Invalid value for '--threads': 'many' is not an integer."
    """

    kind: Any = str

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: click.Context) -> Any:
        if isinstance(value, (list, tuple)):
            return [self._one(item, param, ctx) for item in value]
        return self._one(value, param, ctx)

    def _one(self, value: Any, param: _TyperParameter, ctx: click.Context) -> Any:
        if isinstance(value, self.kind):
            return value
        name, convert, _ = _PLAIN_TYPES[self.kind]
        try:
            return convert(value)
        except (TypeError, ValueError):
            raise click.exceptions.BadParameter(f"{value!r} is not {name}.", ctx=ctx, param=param) from None


def _plain_kind(annotation: Any, info: ParameterInfo) -> Any | None:
    """The plain type a parameter reads (None: typer's own reading, for constraints and other types)."""
    kind = _element_type(annotation)
    constrained = info.parser is not None or info.min is not None or info.max is not None or info.clamp
    path_checks = info.exists or info.resolve_path or not (info.file_okay and info.dir_okay) or info.writable
    if kind not in _PLAIN_TYPES or constrained or (kind is Path and path_checks):
        return None
    return kind


class _Argument(TyperArgument):
    """An argument shown as click shows it: `NAMES...` and `[MODEL_DIR]`, without typer 0.29's
    `{names}...` and `<list[str]>`."""

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.metavar or ""
        return name if self.required else f"[{name}]"


class Command(_QuickHelp, TyperCommand):
    """A command of `mllm-cpu`: typer's, with the quick `--help`, plain values read without pydantic and
    click's names for option values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, _TyperParameter):
                descriptor = param.type_descriptor
                kind = _plain_kind(descriptor.annotation, descriptor.parameter_info)
                if kind is not None:
                    param._runtime_param = _PlainValue(descriptor.parameter_info, descriptor.annotation, kind)
            if isinstance(param, TyperOption) and param.metavar is None and not param.is_flag:
                plain = _PLAIN_TYPES.get(_element_type(param.type_descriptor.annotation))
                param.metavar = plain[2] if plain else None
            elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
                param.__class__ = _Argument
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")


@cache
def load_command(name: str) -> click.Command:
    """Import one command's module and build its click command."""
    entry = COMMANDS[name]
    function = getattr(importlib.import_module(f"mllm_cpu.commands.{entry.module}"), entry.function)
    single = typer.Typer(add_completion=False, rich_markup_mode=None)
    single.command(name, cls=Command)(function)
    return typer.main.get_command(single)


def command_docstring(name: str) -> str:
    """A command's docstring, read from its module's source without importing (or parsing) it."""
    entry = COMMANDS[name]
    spec = importlib.util.find_spec(f"mllm_cpu.commands.{entry.module}")
    if spec is None or spec.origin is None:
        return ""
    source = Path(spec.origin).read_text(encoding="utf-8")
    found = re.search(rf'^def {entry.function}\(.*?\) -> [^:\n]+:\n\s+"""(.*?)"""', source, re.DOTALL | re.MULTILINE)
    return inspect.cleandoc(found[1]) if found else ""


class LazyCommands(_QuickHelp, TyperGroup):
    """The root command group: lists every command, imports only the one that runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        return Command(cmd_name, help=command_docstring(cmd_name))  # a stand-in for the help list

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in COMMANDS:
            self.commands[args[0]] = load_command(args[0])
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        """typer turns every KeyboardInterrupt into exit 130; SIGTERM (Terminated) keeps its own code."""
        try:
            return super().invoke(ctx)
        except Terminated:
            raise typer.Exit(EXIT_TERMINATED) from None


app = typer.Typer(
    cls=LazyCommands,
    add_completion=False,
    rich_markup_mode=None,  # plain help, as llama.cpp's tools print it: whole when piped, no rich.markdown to import
    help="Run Meta's MobileLLM-R1 reasoning models (and MobileLLM v1) on CPUs with llama.cpp.",
)


@app.callback(invoke_without_command=True)
def root(context: typer.Context) -> None:
    """Run Meta's MobileLLM-R1 reasoning models (and MobileLLM v1) on CPUs with llama.cpp."""
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())


def _fail(message: str, code: int) -> None:
    """Print the one error line and exit; with MLLM_CPU_DEBUG=1, re-raise the error being handled first."""
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    if os.environ.get(DEBUG_ENV, "") not in ("", "0") and sys.exc_info()[1] is not None:
        raise
    sys.exit(code)


def main() -> None:
    """Console entry point; the one place that maps failures to exit codes.

    Bad input or environment (InputError, a file-system error, a usage error) -> one
    `error:` line and 2; Ctrl-C -> 130 (SIGTERM, where a command turns it into
    Terminated, -> 143); a wrong answer -> 1 (the commands return it).
    """
    set_notice_sink(lambda line: err.print(Text.assemble(("note: ", "bold"), line), soft_wrap=True))
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
    except (typer.Abort, KeyboardInterrupt) as error:  # click turns KeyboardInterrupt into Abort
        if isinstance(error, Terminated) or isinstance(error.__cause__, Terminated):
            err.print("terminated")
            sys.exit(EXIT_TERMINATED)
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as error:
        context = getattr(error, "ctx", None)
        where = f" (see `{context.command_path} --help`)" if context is not None else ""
        _fail(f"{error.format_message()}{where}", getattr(error, "exit_code", EXIT_INPUT) or EXIT_INPUT)
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        err.print("interrupted" if code == EXIT_INTERRUPTED else "terminated")
    sys.exit(code if isinstance(code, int) else 0)
