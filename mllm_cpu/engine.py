"""Load a MobileLLM-R1 GGUF in llama.cpp and generate text, streaming, with stop ids and seeds."""

from __future__ import annotations

import codecs
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log, last_error
from mllm_cpu.hardware import physical_cores
from mllm_cpu.model_file import ModelFile, validate_model_file

DEFAULT_CONTEXT = 8192
Message = dict[str, str]


@dataclass
class SamplingOptions:
    """Sampling settings; the defaults suit a small reasoning model.

    `logit_bias` maps token ids to values added to their logits before sampling.
    """

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 8192
    logit_bias: dict[int, float] = field(default_factory=dict)


_SAMPLING_KEYS = {
    "temperature": "general.sampling.temp",
    "top_p": "general.sampling.top_p",
    "top_k": "general.sampling.top_k",
    "min_p": "general.sampling.min_p",
    "repeat_penalty": "general.sampling.penalty_repeat",
}


def sampling_defaults(metadata: dict[str, Any]) -> SamplingOptions:
    """SamplingOptions with the file's `general.sampling.*` values where present."""
    options = SamplingOptions()
    types = {f.name: type(getattr(options, f.name)) for f in fields(options)}
    for name, key in _SAMPLING_KEYS.items():
        value = metadata.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(options, name, types[name](value))
    return options


@dataclass
class Generation:
    """The result of one generation."""

    text: str
    prompt_tokens: int
    generated_tokens: int
    prompt_seconds: float
    generation_seconds: float
    stop_reason: str
    token_ids: list[int] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        """Generation speed after the first token, as the user sees it."""
        if self.generated_tokens < 2 or self.generation_seconds <= 0:
            return 0.0
        return (self.generated_tokens - 1) / self.generation_seconds


class Engine:
    """A loaded model: chat-template rendering, tokenization and streaming generation."""

    def __init__(self, path: Path, *, n_ctx: int | None = None, threads: int | None = None) -> None:
        """Validate and load a GGUF; `n_ctx` defaults to 8192 (or the model's trained length if shorter)."""
        import llama_cpp

        self.model: ModelFile = validate_model_file(Path(path))
        if n_ctx is not None and n_ctx < 64:
            raise InputError(f"context length {n_ctx} is too small (at least 64)")
        if n_ctx is not None and n_ctx > self.model.n_ctx_train:
            raise InputError(f"context length {n_ctx} is more than the model's {self.model.n_ctx_train} tokens")
        self.n_ctx = n_ctx or min(DEFAULT_CONTEXT, self.model.n_ctx_train)
        self.threads = threads or physical_cores()
        if self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        with captured_llama_log() as log:
            try:
                self.llama = llama_cpp.Llama(
                    str(path),
                    n_ctx=self.n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    use_mmap=True,
                    verbose=False,
                )
            except ValueError:
                raise InputError(f"llama.cpp could not load {path}: {last_error(log)}") from None
        self._warm_up()
        self._vocab = self.llama._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        header = self.model.header
        self.stop_ids = {
            int(header.get(key))
            for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
            if header.get(key) is not None
        }
        self.chat_template: str | None = header.get("tokenizer.chat_template")
        self._bos_text = self._token_text(header.get("tokenizer.ggml.bos_token_id"))
        self._eos_text = self._token_text(header.get("tokenizer.ggml.eos_token_id"))
        self._formatter: Any = None

    def _warm_up(self) -> None:
        """Evaluate one token and forget it, as llama.cpp's tools do: the first reply pays no start-up costs."""
        bos = self.model.header.get("tokenizer.ggml.bos_token_id")
        self.llama.eval([int(bos) if bos is not None else 0])
        self.llama.reset()

    def _token_text(self, token_id: Any) -> str:
        if token_id is None:
            return ""
        return self.llama.detokenize([int(token_id)], special=True).decode("utf-8", errors="replace")

    def default_options(self) -> SamplingOptions:
        """The sampling defaults, with the file's `general.sampling.*` values applied."""
        return sampling_defaults(self.model.header.metadata)

    def is_stop(self, token: int) -> bool:
        """True for every end-of-generation token: eos, eot, eom and llama.cpp's EOG set."""
        return token in self.stop_ids or bool(self._is_eog(self._vocab, token))

    def render_chat(self, messages: list[Message]) -> str:
        """The prompt text for a conversation, by the file's chat template."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.chat_template:
            turns = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return f"{turns}assistant: "
        if self._formatter is None:
            self._formatter = Jinja2ChatFormatter(self.chat_template, self._eos_text, self._bos_text)
        return self._formatter(messages=messages).prompt

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt; special tokens in the text are parsed, BOS added once."""
        add_bos = bool(self.model.header.get("tokenizer.ggml.add_bos_token", True))
        if self._bos_text and text.startswith(self._bos_text):
            add_bos = False
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def generate(
        self,
        prompt: str | list[int],
        options: SamplingOptions | None = None,
        on_text: Callable[[str], None] | None = None,
        *,
        reuse_prefix: bool = True,
    ) -> Generation:
        """Generate from a prompt (text or token ids), calling `on_text` with each new piece.

        Ctrl-C stops the generation and returns what was produced so far. With `reuse_prefix`
        the part of the prompt already in the KV cache is not evaluated again; without it the
        whole prompt is evaluated afresh, so the output depends only on prompt, options and seed.
        """
        options = options or self.default_options()
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if len(tokens) >= self.n_ctx:
            raise InputError(f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}")
        self.llama.set_seed(options.seed if options.seed is not None else random.randrange(2**31))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        generated: list[int] = []
        budget = min(options.max_tokens, self.n_ctx - len(tokens))
        stop_reason = "length" if budget == options.max_tokens else "context"
        start = time.perf_counter()
        first_token_at = start
        if not reuse_prefix:
            self.llama.reset()
        stream = self.llama.generate(
            tokens,
            top_k=options.top_k,
            top_p=options.top_p,
            min_p=options.min_p,
            temp=options.temperature,
            repeat_penalty=options.repeat_penalty,
            reset=True,
            logits_processor=self._bias_processor(options.logit_bias),
        )
        try:
            for token in stream:
                if not generated:
                    first_token_at = time.perf_counter()
                if self.is_stop(token):
                    stop_reason = "eos"
                    break
                generated.append(token)
                piece = decoder.decode(self.llama.detokenize([token], special=False))
                if piece:
                    pieces.append(piece)
                    if on_text:
                        on_text(piece)
                if len(generated) >= budget:
                    break
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        finally:
            stream.close()
        end = time.perf_counter()
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            if on_text:
                on_text(tail)
        return Generation(
            text="".join(pieces),
            prompt_tokens=len(tokens),
            generated_tokens=len(generated),
            prompt_seconds=first_token_at - start,
            generation_seconds=end - first_token_at,
            stop_reason=stop_reason,
            token_ids=generated,
        )

    def _bias_processor(self, logit_bias: dict[int, float]) -> Any:
        """A llama-cpp-python logits processor adding `logit_bias` (token id -> bias), or None."""
        if not logit_bias:
            return None
        from llama_cpp import LogitsProcessorList

        n_vocab = self.model.n_vocab
        bad = [token for token in logit_bias if not 0 <= token < n_vocab]
        if bad:
            raise InputError(f"logit bias for token {bad[0]}, outside the vocabulary of {n_vocab}")
        ids = np.fromiter(logit_bias, dtype=np.int64)
        biases = np.fromiter(logit_bias.values(), dtype=np.float32)

        def add_bias(input_ids: Any, scores: np.ndarray) -> np.ndarray:
            scores[ids] += biases
            return scores

        return LogitsProcessorList([add_bias])

    def chat(
        self,
        messages: list[Message],
        options: SamplingOptions | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Generate the assistant's reply to a conversation."""
        return self.generate(self.render_chat(messages), options, on_text)
