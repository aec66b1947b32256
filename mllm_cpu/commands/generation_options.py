"""Command-line options shared by `solve` and `chat`: the model, the context, and sampling."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Optional

import typer

from mllm_cpu.console import err
from mllm_cpu.convert.errors import InputError
from mllm_cpu.engine import Engine, SamplingOptions
from mllm_cpu.store import resolve_model

ModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="GGUF file, model name in the store, or Hugging Face checkpoint folder "
    "(default: the store's model).")]
ContextOption = Annotated[Optional[int], typer.Option(
    "--ctx", help="Context length in tokens (default 8192, at most the model's trained length).")]
ThreadsOption = Annotated[Optional[int], typer.Option(help="CPU threads (default: physical cores).")]
TemperatureOption = Annotated[Optional[float], typer.Option(
    "--temperature", "--temp", help="Sampling temperature; 0 is greedy (default 0.6 or the file's).")]
TopPOption = Annotated[Optional[float], typer.Option(help="Nucleus sampling threshold (default 0.95).")]
TopKOption = Annotated[Optional[int], typer.Option(help="Sample among the k likeliest tokens (default 20).")]
MinPOption = Annotated[Optional[float], typer.Option(help="Minimum probability relative to the top token (default 0).")]
RepeatPenaltyOption = Annotated[Optional[float], typer.Option(help="Repetition penalty; 1 is off (default 1).")]
SeedOption = Annotated[Optional[int], typer.Option(help="Random seed, for reproducible output.")]
MaxTokensOption = Annotated[Optional[int], typer.Option(help="Most tokens to generate (default 8192).")]


def load_engine(model: str | None, ctx: int | None, threads: int | None) -> Engine:
    """Resolve `--model` and load it, with a spinner on stderr."""
    path = resolve_model(model)
    with err.status(f"loading {path.name}"):
        return Engine(path, n_ctx=ctx, threads=threads)


def sampling_options(engine: Engine, *, temperature: float | None, top_p: float | None, top_k: int | None,
                     min_p: float | None, repeat_penalty: float | None, seed: int | None,
                     max_tokens: int | None) -> SamplingOptions:
    """The model's sampling defaults with the flags the user gave applied on top."""
    given = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
             "repeat_penalty": repeat_penalty, "seed": seed, "max_tokens": max_tokens}
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"--max-tokens must be at least 1, got {max_tokens}")
    return replace(engine.default_options(), **{name: value for name, value in given.items() if value is not None})
