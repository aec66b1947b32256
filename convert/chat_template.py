"""A checkpoint's chat template, checked before it is written into a GGUF file.

The runtime renders the template with llama-cpp-python's `Jinja2ChatFormatter` (jinja2's
immutable sandboxed environment with the extensions transformers uses); the converter
compiles it the same way, so a template that could never render is refused at conversion
with one line naming its file, not at every later start of a chat.
"""

from __future__ import annotations

from pathlib import Path

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.user_files import size_text

from .checkpoint_files import CHAT_TEMPLATE, FILE_LIMITS

TEMPLATE_LIMIT = FILE_LIMITS[CHAT_TEMPLATE]
"""The longest chat template taken, from either file (real ones are a few KiB)."""


def check_chat_template(template: str, source: Path) -> None:
    """InputError naming `source` when `template` is too long or does not compile as the runtime compiles it."""
    import jinja2
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    if len(template.encode("utf-8", errors="surrogatepass")) > TEMPLATE_LIMIT:
        raise InputError(f"{source}: the chat template is larger than {size_text(TEMPLATE_LIMIT)}")
    try:
        Jinja2ChatFormatter(template, eos_token="", bos_token="")
    except jinja2.TemplateSyntaxError as error:
        line = f" (line {error.lineno})" if error.lineno else ""
        raise InputError(f"{source}: the chat template is not valid Jinja: {_one_line(error.message)}{line}") from None
    except (jinja2.TemplateError, RecursionError, MemoryError, SyntaxError, ValueError) as error:
        problem = "nested too deeply" if isinstance(error, RecursionError) else _one_line(str(error))
        raise InputError(f"{source}: the chat template does not compile: {problem}") from None


def _one_line(text: str | None) -> str:
    return " ".join((text or "unknown error").split())
