"""Model and sampling options, declared once: name, flags, type, bounds and help.

`OPTIONS` is the one table. `with_options(*names)` adds the named options to a typer
command's signature and hands the command one validated `Flags` record instead of a dozen
parameters; `Flags.sampling(engine)` applies the given values over the model's defaults.
Add a new shared option by adding a row here and a field to `Flags`.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Annotated, Any, TypeVar

import typer

from mllm_cpu.console import err
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine, SamplingOptions
from mllm_cpu.store import resolve_model


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option: its parameter name, flags, value type, bounds and help text.

    `low`/`high` are inclusive bounds; `low_open` makes the lower bound exclusive.
    """

    name: str
    flags: tuple[str, ...]
    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def check(self, value: Any) -> None:
        """Raise InputError naming the flag when `value` is outside the bounds (or not finite)."""
        if value is None or self.kind is str:
            return
        flag = self.flags[0]
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value}")
        high = self.high
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            bound = f"more than {self.low:g}" if self.low_open else f"at least {self.low:g}"
            raise InputError(f"{flag} must be {bound}, got {value}")
        if high is not None and value > high:
            raise InputError(f"{flag} must be at most {high:g}, got {value}")


def _logical_cores() -> int:
    return os.cpu_count() or 1


OPTIONS: dict[str, OptionSpec] = {
    spec.name: spec
    for spec in (
        OptionSpec(
            "model",
            ("--model", "-m"),
            str,
            "GGUF file, model name in the store, or Hugging Face checkpoint folder (default: the store's model).",
        ),
        OptionSpec(
            "ctx", ("--ctx",), int, "Context length in tokens (default 8192, at most the model's trained length).", 64
        ),
        OptionSpec("threads", ("--threads",), int, "CPU threads (default: physical cores).", 1, _logical_cores()),
        OptionSpec(
            "temperature",
            ("--temperature", "--temp"),
            float,
            "Sampling temperature; 0 is greedy (default 0.6 or the file's).",
            0,
        ),
        OptionSpec("top_p", ("--top-p",), float, "Nucleus sampling threshold (default 0.95).", 0, 1, low_open=True),
        OptionSpec("top_k", ("--top-k",), int, "Sample among the k likeliest tokens; 0 is all (default 20).", 0),
        OptionSpec("min_p", ("--min-p",), float, "Minimum probability relative to the top token (default 0).", 0, 1),
        OptionSpec(
            "repeat_penalty",
            ("--repeat-penalty",),
            float,
            "Repetition penalty; 1 is off (default 1).",
            0,
            low_open=True,
        ),
        OptionSpec("seed", ("--seed",), int, "Random seed, for reproducible output.", 0, 2**32 - 1),
        OptionSpec("max_tokens", ("--max-tokens",), int, "Most tokens to generate (default 8192).", 1),
    )
}
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens")


@dataclass(frozen=True)
class Flags:
    """The shared options as the user gave them (None where not given)."""

    model: str | None = None
    ctx: int | None = None
    threads: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None

    def validate(self) -> Flags:
        """Check every given value against its bounds; returns self."""
        for field in fields(self):
            OPTIONS[field.name].check(getattr(self, field.name))
        return self

    def load_engine(self) -> Engine:
        """Resolve `--model` and load it, with a spinner on stderr."""
        path = resolve_model(self.model)
        with err.status(f"loading {path.name}"):
            return Engine(path, n_ctx=self.ctx, threads=self.threads)

    def sampling(self, engine: Engine) -> SamplingOptions:
        """The model's sampling defaults with the flags the user gave applied on top."""
        given = {name: getattr(self, name) for name in SAMPLING_FIELDS if getattr(self, name) is not None}
        return replace(engine.default_options(), **given)


_F = TypeVar("_F", bound=Callable[..., Any])


def with_options(*names: str) -> Callable[[_F], _F]:
    """Add the named OPTIONS (all when none are named) to a command; it receives them as `flags: Flags`."""
    chosen = [OPTIONS[name] for name in (names or OPTIONS)]

    def decorate(command: _F) -> _F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "flags"]
        added = [
            inspect.Parameter(
                spec.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[spec.kind | None, typer.Option(*spec.flags, help=spec.help)],
            )
            for spec in chosen
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = Flags(**{spec.name: kwargs.pop(spec.name, None) for spec in chosen}).validate()
            return command(*args, flags=flags, **kwargs)

        parameters = own + added
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate
