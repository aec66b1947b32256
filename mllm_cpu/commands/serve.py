"""`mllm-cpu serve`: an OpenAI-compatible HTTP server for models in the store."""

from __future__ import annotations

import threading
from typing import Annotated

import typer
from rich.markup import escape

from mllm_cpu.batched import DEFAULT_PARALLEL_CAP, MAX_PARALLEL
from mllm_cpu.commands.console import conversion_bars, err
from mllm_cpu.commands.options import Flags, with_options
from mllm_cpu.server import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_QUEUE, ServeOptions
from mllm_cpu.server import serve as run_server


@with_options("model", "ctx", "threads", "api_key", repeat=("model",))
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; other than loopback it needs --api-key or --insecure.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = DEFAULT_PORT,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without an API key.")
    ] = False,
    queue: Annotated[
        int, typer.Option(help="Most requests in flight (running or waiting); more get 503 with Retry-After.")
    ] = DEFAULT_QUEUE,
    parallel: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_PARALLEL,
            help="Requests decoded together, one sequence each in one batch (default: two per core, at most "
            f"{DEFAULT_PARALLEL_CAP}, as many as memory holds; shown at start-up). More wait in the queue.",
        ),
    ] = None,
    open_page: Annotated[
        bool, typer.Option("--open", help="Open the tutor page in this machine's web browser once serving.")
    ] = False,
    *,
    flags: Flags,
) -> None:
    """Serve models over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /health.

    Give --model once per model (store name, file or checkpoint folder). The model runs in a process of
    its own that decodes up to --parallel requests together; if llama.cpp crashes there, the requests in
    flight end with an error and it starts again. Stop with Ctrl-C or SIGTERM: requests in flight end
    cleanly.

    /extras/tokenize and /extras/detokenize are served too; other paths are 404. On / is the tutor page:
    a browser page to ask problems and read the reasoning and answer (math shown as math); its address is
    printed at start-up. The page itself is public (it holds no data); with --api-key it asks for the key.
    """
    options = ServeOptions(
        models=list(flags.models),
        host=host,
        port=port,
        api_key=flags.api_key,
        insecure=insecure,
        n_ctx=flags.ctx,
        threads=flags.threads,
        queue=queue,
        parallel=parallel,
    )
    code = run_server(
        options,
        announce=lambda line: err.print(escape(line), highlight=False, soft_wrap=True),
        warn=_warn,
        display=conversion_bars,
        on_listening=_open_in_browser if open_page else None,
    )
    raise typer.Exit(code)


def _warn(line: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)


def _open_in_browser(url: str) -> None:
    """Open `url` in the web browser ($BROWSER, else the desktop's), on a thread of its own: a browser
    that runs in the terminal returns only when it is closed, and the server must not wait for it."""

    def run() -> None:
        import webbrowser

        if not webbrowser.open(url):
            _warn(f"no web browser could be opened here: open {url} in one")

    threading.Thread(target=run, name="open-browser", daemon=True).start()
