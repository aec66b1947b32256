"""Model and sampling options, declared once: name, flags, type, bounds and help.

`OPTIONS` is the one table. `with_options(*names)` adds the named options to a typer
command's signature and hands the command one validated `Flags` record instead of a dozen
parameters; `Flags.sampling(engine)` applies the given values over the model's defaults.
Add a new shared option by adding a row here and a field to `Flags`; a sampling option is also
a field of `SamplingOptions` (mllm_cpu/sampling.py), whose defaults the help texts show.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, TypeVar

import typer

from mllm_cpu.backend import Backend
from mllm_cpu.commands.console import conversion_bars, err
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import comma_list
from mllm_cpu.endpoint import API_KEY_ENV, ENDPOINT_ENV, EndpointBackend
from mllm_cpu.engine import DEFAULT_CONTEXT, MIN_CONTEXT, Engine
from mllm_cpu.sampling import DEFAULT_MAX_TOKENS, SCALAR_FIELDS, SamplingOptions
from mllm_cpu.store import resolve_model


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option: its parameter name, flags, value type, bounds and help text.

    `low`/`high` are inclusive bounds; `low_open` makes the lower bound exclusive. `plural`
    names the Flags field that holds every value when a command lets the option repeat.
    `envvar` is an environment variable read when the option is not given.
    """

    name: str
    flags: tuple[str, ...]
    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    plural: str | None = None
    envvar: str | None = None

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


_DEFAULTS = SamplingOptions()
"""The sampling defaults the help texts show."""


OPTIONS: dict[str, OptionSpec] = {
    spec.name: spec
    for spec in (
        OptionSpec(
            "model",
            ("--model", "-m"),
            str,
            "GGUF file, model name in the store, or Hugging Face checkpoint folder (default: the store's model).",
            plural="models",
        ),
        OptionSpec(
            "ctx",
            ("--ctx",),
            int,
            f"Context length in tokens (default {DEFAULT_CONTEXT}, at most the model's trained length).",
            MIN_CONTEXT,
        ),
        OptionSpec("threads", ("--threads",), int, "CPU threads (default: physical cores).", 1, _logical_cores()),
        OptionSpec(
            "temperature",
            ("--temperature", "--temp"),
            float,
            f"Sampling temperature; 0 is greedy (default {_DEFAULTS.temperature:g} or the file's).",
            0,
        ),
        OptionSpec(
            "top_p",
            ("--top-p",),
            float,
            f"Nucleus sampling threshold (default {_DEFAULTS.top_p:g}).",
            0,
            1,
            low_open=True,
        ),
        OptionSpec(
            "top_k", ("--top-k",), int, f"Sample among the k likeliest tokens; 0 is all (default {_DEFAULTS.top_k}).", 0
        ),
        OptionSpec(
            "min_p",
            ("--min-p",),
            float,
            f"Minimum probability relative to the top token (default {_DEFAULTS.min_p:g}).",
            0,
            1,
        ),
        OptionSpec(
            "repeat_penalty",
            ("--repeat-penalty",),
            float,
            f"Repetition penalty; 1 is off (default {_DEFAULTS.repeat_penalty:g}).",
            0,
            low_open=True,
        ),
        OptionSpec("seed", ("--seed",), int, "Random seed, for reproducible output.", 0, 2**32 - 1),
        OptionSpec("max_tokens", ("--max-tokens",), int, f"Most tokens to generate (default {DEFAULT_MAX_TOKENS}).", 1),
        OptionSpec(
            "endpoint",
            ("--endpoint",),
            str,
            "OpenAI-compatible server to use instead of a local model, e.g. http://host:8080/v1 "
            "(mllm-cpu serve, llama-server, vLLM); --model then names the served model.",
            plural="endpoints",
            envvar=ENDPOINT_ENV,
        ),
        OptionSpec(
            "api_key",
            ("--api-key",),
            str,
            "API key (bearer token) for --endpoint, or the key `serve` requires.",
            envvar=API_KEY_ENV,
        ),
        OptionSpec(
            "parallel",
            ("--parallel",),
            int,
            "Batch: problems solved at once (spread over the --endpoint servers, or decoded together by the "
            "local model).",
            1,
            256,
        ),
        OptionSpec(
            "budget",
            ("--budget",),
            str,
            "Thinking budget: after N tokens without a final answer, end the reasoning and force one. "
            "solve --file takes a comma-separated list (256,1024,4096) for an accuracy-versus-budget sweep.",
        ),
        OptionSpec(
            "answer_tokens",
            ("--answer-tokens",),
            int,
            "Most tokens for a forced answer after the budget (default: the task's, 64 for math, 512 for code).",
            1,
        ),
        OptionSpec(
            "draft",
            ("--draft",),
            str,
            "Speculative decoding with this smaller model (file or store name; same tokenizer as --model).",
        ),
        OptionSpec("lookup", ("--lookup",), int, "Speculative decoding by prompt lookup, drafting N tokens.", 1, 64),
    )
}


@dataclass(frozen=True)
class Flags:
    """The shared options as the user gave them (None where not given)."""

    model: str | None = None
    models: tuple[str, ...] = ()
    ctx: int | None = None
    threads: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    endpoint: str | None = None
    endpoints: tuple[str, ...] = ()
    api_key: str | None = None
    parallel: int | None = None
    budget: str | None = None
    answer_tokens: int | None = None
    draft: str | None = None
    lookup: int | None = None

    def validate(self) -> Flags:
        """Check every given value against its bounds; returns self."""
        for spec in OPTIONS.values():
            for value in (getattr(self, spec.plural) if spec.plural else ()) + (getattr(self, spec.name),):
                spec.check(value)
        return self

    def load_engine(self) -> Engine:
        """Resolve `--model` (a checkpoint folder's conversion shown on stderr) and load it, with a spinner."""
        path = resolve_model(self.model, conversion_bars)
        with err.status(f"loading {path.name}"):
            draft = resolve_model(self.draft, conversion_bars) if self.draft is not None else None
            return Engine(path, n_ctx=self.ctx, threads=self.threads, draft=draft, lookup=self.lookup)

    def load_runner(self) -> Backend:
        """The local model in a runner process that decodes `--parallel` replies together, with a spinner."""
        from mllm_cpu.runner_backend import RunnerBackend

        if self.draft is not None or self.lookup is not None:
            raise InputError("--draft and --lookup speed up one reply at a time; not with --parallel")
        assert self.parallel is not None
        path = resolve_model(self.model, conversion_bars)
        with err.status(f"loading {path.name} ({self.parallel} problems at once)"):
            return RunnerBackend(path, self.parallel, n_ctx=self.ctx, threads=self.threads, log=_notice)

    def budgets(self) -> list[int]:
        """The `--budget` values (several for a sweep), empty when not given; InputError when malformed."""
        if self.budget is None:
            return []
        try:
            values = [int(part) for part in comma_list(self.budget)]
        except ValueError:
            values = []
        if not values:
            raise InputError(f"--budget takes token counts such as 1024 or 256,1024,4096, got {self.budget!r}")
        for value in values:
            if value < 1:
                raise InputError(f"--budget must be at least 1 token, got {value}")
        if len(set(values)) != len(values):
            raise InputError(f"--budget lists a budget twice: {self.budget}")
        return values

    def load_backend(self) -> Backend:
        """The `--endpoint` servers (with `--model` as the served model's name), or the local model."""
        endpoints = self.endpoints or ((self.endpoint,) if self.endpoint else ())
        if not endpoints:
            if self.parallel not in (None, 1):
                return self.load_runner()
            return self.load_engine()
        if self.ctx is not None or self.threads is not None:
            raise InputError("--ctx and --threads set up a local model; the --endpoint server has its own")
        if self.budget is not None or self.draft is not None or self.lookup is not None:
            raise InputError("--budget, --draft and --lookup steer a local model's decoding; not an --endpoint's")
        with err.status(f"connecting to {', '.join(endpoints)}"):
            return EndpointBackend(list(endpoints), self.api_key, self.model)

    def sampling(self, engine: Backend) -> SamplingOptions:
        """The model's sampling defaults with the flags the user gave applied on top."""
        given = {name: getattr(self, name) for name in SCALAR_FIELDS if getattr(self, name) is not None}
        return replace(engine.default_options(), **given)


def _notice(line: str) -> None:
    """A runner's one-line report (it crashed, it is running again), on stderr."""
    err.print(f"note: {line}", markup=False, highlight=False, soft_wrap=True)


_F = TypeVar("_F", bound=Callable[..., Any])


def _annotation(spec: OptionSpec, repeated: bool) -> Any:
    """The typer annotation of an option: one value, or a list when the command lets it repeat."""
    if repeated:
        option = typer.Option(*spec.flags, help=f"{spec.help} Repeatable.", envvar=spec.envvar)
        return Annotated[list[spec.kind] | None, option]  # type: ignore[name-defined]
    return Annotated[spec.kind | None, typer.Option(*spec.flags, help=spec.help, envvar=spec.envvar)]


def with_options(*names: str, repeat: tuple[str, ...] = ()) -> Callable[[_F], _F]:
    """Add the named OPTIONS (all when none are named) to a command; it receives them as `flags: Flags`.

    Options named in `repeat` may be given several times: their plural field holds every
    value, in order, and the singular field the first.
    """
    chosen = [OPTIONS[name] for name in (names or OPTIONS)]
    if any(OPTIONS[name].plural is None for name in repeat):
        raise ValueError(f"only options with a plural field can repeat: {repeat}")

    def decorate(command: _F) -> _F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "flags"]
        added = [
            inspect.Parameter(
                spec.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=_annotation(spec, spec.name in repeat),
            )
            for spec in chosen
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given: dict[str, Any] = {spec.name: kwargs.pop(spec.name, None) for spec in chosen}
            for name in repeat:
                values = tuple(given[name] or ())
                given[name] = values[0] if values else None
                given[str(OPTIONS[name].plural)] = values
            return command(*args, flags=Flags(**given).validate(), **kwargs)

        parameters = own + added
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate
