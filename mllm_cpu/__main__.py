"""The `mllm-cpu` console entry point (and `python -m mllm_cpu`).

It imports nothing of its own before the command line's modules, so a Ctrl-C at any moment of
the start, while typer, rich and the command's libraries are still importing, is the one line
`interrupted` and exit 130, as it is once a command runs (`cli.main`).
"""

import sys


def main() -> None:
    """Import the command line and run it; Ctrl-C during the imports is 130."""
    try:
        from mllm_cpu.cli import main as run
    except KeyboardInterrupt:
        from mllm_cpu.core.errors import EXIT_INTERRUPTED

        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    run()


if __name__ == "__main__":
    main()
