"""gguf-py's constants (keys, architectures, tensor names, value and quant types) without the rest of gguf-py.

`import gguf` runs gguf-py's whole package: its reader, writer and quants import numpy and its
metadata yaml, about 0.1 s before a command can start. Its `constants` module imports only the
standard library, so the modules that only read headers use it alone, as
`from mllm_cpu.core.gguf_constants import constants as gguf` (the same names gguf-py exports).
It is loaded under its own name, `gguf.constants`: when gguf-py is imported later (to convert or
write a file) it takes this same module, so the enums are one and the same.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

_NAME = "gguf.constants"


def _load() -> object:
    """gguf-py's constants module, loaded alone unless gguf-py (or the module) is imported already."""
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    package = importlib.util.find_spec("gguf")  # finds the package without running its __init__
    if package is None or not package.submodule_search_locations:
        raise ImportError("gguf-py is not installed")
    location = f"{next(iter(package.submodule_search_locations))}/constants.py"
    spec = importlib.util.spec_from_file_location(_NAME, location)
    if spec is None or spec.loader is None:
        raise ImportError(f"gguf-py's constants are missing ({location})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    return module


if TYPE_CHECKING:
    import gguf.constants as constants
else:
    constants = _load()
