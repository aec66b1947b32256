"""Start a module of this package in a child Python process, as installed.

`python -m` and `python -c` put the current folder first on `sys.path`; run from a checkout
of this repository, its `mllm_cpu/` folder (which has no `convert/` or `bench/` inside)
would then shadow the installed package. The child drops that entry before importing.
"""

from __future__ import annotations

import sys


def module_command(module: str, *arguments: str) -> list[str]:
    """The command running `python -m module arguments...` without the current folder on sys.path."""
    code = f"import runpy, sys; del sys.path[0]; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", code, *arguments]
