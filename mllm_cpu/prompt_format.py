"""A model file's chat template and tokenization: the prompt text and token ids of a conversation."""

from __future__ import annotations

from typing import Any

import jinja2

from mllm_cpu.convert.gguf_header import GGUFHeader
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError

Message = dict[str, str]
_PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
"""Turn labels of the plain transcript used for files without a chat template (base models)."""


class PromptTooLong(InputError):
    """A prompt that does not fit the context: a fact about one problem, not about the run (a batch records it)."""


class PromptFormat:
    """Renders conversations by the file's chat template and tokenizes prompts as the runtime does.

    `llama` is a loaded `llama_cpp.Llama` (a vocabulary-only one is enough).
    """

    def __init__(self, header: GGUFHeader, llama: Any) -> None:
        self._llama = llama
        self.chat_template: str | None = header.get(gguf_keys.CHAT_TEMPLATE)
        self.bos_text = self._token_text(header.get(gguf_keys.BOS_ID))
        self.eos_text = self._token_text(header.get(gguf_keys.EOS_ID))
        self.add_bos = bool(llama._model.add_bos_token())  # llama.cpp's reading of the file (its key or its default)
        self.stop_texts: tuple[str, ...] = () if self.chat_template else tuple(f"\n{r}:" for r in _PLAIN_ROLES.values())
        """Text that ends a reply: a next turn's label in the plain transcript of a file without a template."""
        self._formatter: Any = None

    def _token_text(self, token_id: Any) -> str:
        if token_id is None:
            return ""
        return str(self._llama.detokenize([int(token_id)], special=True).decode("utf-8", errors="replace"))

    def render(self, messages: list[Message]) -> str:
        """The prompt text for a conversation, by the file's chat template."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.chat_template:
            turns = "".join(f"{_PLAIN_ROLES.get(m['role'], m['role'])}: {m['content']}\n" for m in messages)
            return f"{turns}{_PLAIN_ROLES['assistant']}:"
        if self._formatter is None:
            self._formatter = Jinja2ChatFormatter(self.chat_template, self.eos_text, self.bos_text)
        try:
            return str(self._formatter(messages=messages).prompt)
        except (jinja2.TemplateError, ValueError) as error:  # llama-cpp-python's raise_exception raises ValueError
            if len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
                return self.render(_system_in_first_turn(messages))  # templates without a system role (gemma)
            raise InputError(f"the model's chat template failed: {error}") from None

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt; special tokens in the text are parsed, BOS added once."""
        add_bos = self.add_bos and not (self.bos_text and text.startswith(self.bos_text))
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def with_bos(self, text: str) -> str:
        """The prompt text with the BOS token written out where `tokenize` would add it."""
        if self.add_bos and self.bos_text and not text.startswith(self.bos_text):
            return self.bos_text + text
        return text


def _system_in_first_turn(messages: list[Message]) -> list[Message]:
    """The system prompt moved into the first user turn, for templates that reject a system role."""
    system, first, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]
