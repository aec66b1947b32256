"""Load a MobileLLM-R1 GGUF in llama.cpp and generate text, streaming, with stop ids and seeds."""

from __future__ import annotations

import codecs
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log, last_error
from mllm_cpu.hardware import physical_cores
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.load_check import prepare_load
from mllm_cpu.model_file import ModelFile, validate_model_file
from mllm_cpu.prompt_format import Message, PromptFormat, PromptTooLong, special_tokens_not_utf8
from mllm_cpu.sampling import SamplingOptions, sampling_defaults
from mllm_cpu.stop_text import StopTextFilter

if TYPE_CHECKING:
    import numpy as np

    from mllm_cpu.drafting import CountingDraft, DraftStats

DEFAULT_CONTEXT = 8192
"""The context a model runs with unless told otherwise (or its trained length if shorter)."""
MIN_CONTEXT = 64
"""The shortest context a model may be run with (`--ctx`'s lower bound, in `bench` too)."""
MAX_TRAINED_CONTEXT = 1 << 24
"""The largest trained context (`{arch}.context_length`) a file may claim: llama-cpp-python allocates
that many tokens for every tokenization, and llama.cpp's API reads it as a 32-bit signed number."""
FLASH_ATTENTION = False
"""chat, solve and serve run without llama.cpp's flash attention: on CPU it decodes at about half
the speed once 2,000 tokens are in context (a reasoning trace's usual depth), for a smaller compute
buffer. `mllm-cpu bench -fa on,off -d 0,512,2048` measures both; see docs/DESIGN.md."""


class StopReason(str, Enum):
    """Why a generation ended; the value is what --json output shows."""

    EOS = "eos"
    """The model wrote an end-of-generation token."""
    LENGTH = "length"
    """The token budget (--max-tokens) ran out."""
    CONTEXT = "context"
    """The context window filled up."""
    BUDGET = "budget"
    """The thinking budget (--budget) ran out after the final answer was written."""
    INTERRUPTED = "interrupted"
    """Ctrl-C."""

    def __str__(self) -> str:
        return self.value


@dataclass
class Generation:
    """The result of one generation."""

    text: str
    prompt_tokens: int
    generated_tokens: int
    prompt_seconds: float
    generation_seconds: float
    stop_reason: StopReason
    token_ids: list[int] = field(default_factory=list)
    draft: DraftStats | None = None
    """What speculative decoding did (None without a draft or prompt lookup)."""

    @property
    def tokens_per_second(self) -> float:
        """Generation speed after the first token, as the user sees it."""
        if self.generated_tokens < 2 or self.generation_seconds <= 0:
            return 0.0
        return (self.generated_tokens - 1) / self.generation_seconds


def context_length(model: ModelFile, n_ctx: int | None = None) -> int:
    """The context to run `model` with: `n_ctx`, or DEFAULT_CONTEXT (or the model's trained length if shorter)."""
    if model.n_ctx_train > MAX_TRAINED_CONTEXT:
        raise InputError(
            f"{model.path}: context_length {model.n_ctx_train:,} is more than {MAX_TRAINED_CONTEXT:,} tokens, "
            "the most llama-cpp-python can run (a damaged file?)"
        )
    if n_ctx is not None and n_ctx < MIN_CONTEXT:
        raise InputError(f"context length {n_ctx} is too small (at least {MIN_CONTEXT})")
    if n_ctx is not None and n_ctx > model.n_ctx_train:
        raise InputError(f"context length {n_ctx} is more than the model's {model.n_ctx_train} tokens")
    return n_ctx or min(DEFAULT_CONTEXT, model.n_ctx_train)


class Engine:
    """A loaded model: chat-template rendering, tokenization and streaming generation."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int | None = None,
        threads: int | None = None,
        draft: Path | None = None,
        lookup: int | None = None,
        draft_tokens: int | None = None,
    ) -> None:
        """Validate and load a GGUF; `n_ctx` defaults to DEFAULT_CONTEXT (or the model's trained length if shorter).

        `draft` (a smaller GGUF with the same tokenizer) or `lookup` (n-gram prompt lookup,
        proposing that many tokens) turn on speculative decoding; a draft model proposes
        `draft_tokens` per round (default 4). See mllm_cpu/drafting.py.
        """
        import llama_cpp

        self.model: ModelFile = validate_model_file(Path(path))
        if draft is not None:
            validate_model_file(Path(draft))  # a bad draft is refused before the target's first load
        self.n_ctx = context_length(self.model, n_ctx)
        prepare_load(self.model.path)
        self.threads = threads or physical_cores()
        if self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        if draft is not None and lookup is not None:
            raise InputError("--draft and --lookup are two ways of drafting; give one of them")
        self.drafting: CountingDraft | None = self._drafting(draft, lookup, draft_tokens)
        self.plain_tokens_per_second: float | None = None
        """With drafting: the model's own single-token decode speed, timed at load (for the speed-up)."""
        with captured_llama_log() as log:
            try:
                self.llama = llama_cpp.Llama(
                    str(path),
                    n_ctx=self.n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    use_mmap=True,
                    verbose=False,
                    draft_model=self.drafting,
                    logits_all=self.drafting is not None,
                    flash_attn=FLASH_ATTENTION,
                )
            except UnicodeDecodeError:
                raise special_tokens_not_utf8(path) from None
            except ValueError:
                raise InputError(f"llama.cpp could not load {path}: {last_error(log)}") from None
        if self.drafting is not None:
            from mllm_cpu.drafting import attach_draft

            self.plain_tokens_per_second = attach_draft(self.llama, self.drafting, self.model.name)
        self._warm_up()
        self._vocab = self.llama._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._context = self.llama._ctx.ctx
        self._logits = llama_cpp.llama_get_logits_ith
        header = self.model.header
        self.stop_ids = {
            int(header.get(key))
            for key in (gguf_keys.EOS_ID, gguf_keys.EOT_ID, gguf_keys.EOM_ID)
            if header.get(key) is not None
        }
        self.prompt_format = PromptFormat(header, self.llama)

    def _warm_up(self) -> None:
        """Evaluate one token and forget it, as llama.cpp's tools do: the first reply pays no start-up costs."""
        bos = self.model.header.get(gguf_keys.BOS_ID)
        self.llama.eval([int(bos) if bos is not None else 0])
        self.llama.reset()

    def default_options(self) -> SamplingOptions:
        """The sampling defaults, with the file's `general.sampling.*` values applied."""
        return sampling_defaults(self.model.header.metadata)

    def is_stop(self, token: int) -> bool:
        """True for every end-of-generation token: eos, eot, eom and llama.cpp's EOG set."""
        return token in self.stop_ids or bool(self._is_eog(self._vocab, token))

    def render_chat(self, messages: list[Message]) -> str:
        """The prompt text for a conversation, by the file's chat template."""
        return self.prompt_format.render(messages)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt; special tokens in the text are parsed, BOS added once."""
        return self.prompt_format.tokenize(text)

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
        tokens = self.prompt_format.tokenize(prompt, limit=self.n_ctx) if isinstance(prompt, str) else list(prompt)
        if len(tokens) >= self.n_ctx:
            raise PromptTooLong(f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}")
        bad = [token for token in options.logit_bias if not 0 <= token < self.model.n_vocab]
        if bad:
            raise InputError(f"logit bias for token {bad[0]}, outside the vocabulary of {self.model.n_vocab}")
        seed = options.seed if options.seed is not None else random.randrange(2**31)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stop_text = StopTextFilter(self.prompt_format.stop_texts)
        pieces: list[str] = []
        generated: list[int] = []
        budget = min(options.max_tokens, self.n_ctx - len(tokens))
        stop_reason = StopReason.LENGTH if budget == options.max_tokens else StopReason.CONTEXT
        start = time.perf_counter()
        first_token_at = start
        if not reuse_prefix:
            self.llama.reset()
        stream = self._token_stream(tokens, options, seed)
        try:
            for token in stream:
                if not generated:
                    first_token_at = time.perf_counter()
                if self.is_stop(token):
                    stop_reason = StopReason.EOS
                    break
                generated.append(token)
                piece, stopped = stop_text.feed(decoder.decode(self.llama.detokenize([token], special=False)))
                if piece:
                    pieces.append(piece)
                    if on_text:
                        on_text(piece)
                if stopped:
                    stop_reason = StopReason.EOS
                    break
                if len(generated) >= budget:
                    break
        except KeyboardInterrupt:
            stop_reason = StopReason.INTERRUPTED
        finally:
            stream.close()
        end = time.perf_counter()
        draft_stats = self.drafting.take_stats(len(generated)) if self.drafting is not None else None
        tail = stop_text.feed(decoder.decode(b"", final=True))[0] + stop_text.flush()
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
            draft=draft_stats,
        )

    def _drafting(self, draft: Path | None, lookup: int | None, draft_tokens: int | None) -> CountingDraft | None:
        """The counting draft for `--draft` or `--lookup`, None without either."""
        if draft is None and lookup is None:
            return None
        from mllm_cpu.drafting import DEFAULT_DRAFT_TOKENS, CountingDraft, DraftModel, lookup_draft

        if lookup is not None:
            return CountingDraft(lookup_draft(lookup), f"lookup {lookup}")
        assert draft is not None
        model = DraftModel(draft, n_ctx=self.n_ctx, threads=self.threads, tokens=draft_tokens or DEFAULT_DRAFT_TOKENS)
        return CountingDraft(model, f"draft {Path(draft).name}")

    def _token_stream(self, tokens: list[int], options: SamplingOptions, seed: int) -> Generator[int, None, None]:
        """Evaluate the prompt (after the part already in the KV cache) and yield sampled tokens.

        With drafting, llama-cpp-python's generate does it (speculative decoding); otherwise the
        loop is ours, with mllm_cpu.sampling's faster sampler (the same tokens for a seed).
        """
        llama = self.llama
        if self.drafting is not None:
            llama.set_seed(seed)
            yield from llama.generate(
                tokens,
                top_k=options.top_k,
                top_p=options.top_p,
                min_p=options.min_p,
                temp=options.temperature,
                repeat_penalty=options.repeat_penalty,
                reset=True,
                logits_processor=self._bias_processor(options.logit_bias),
            )
            return
        from mllm_cpu.token_sampler import TokenSampler  # numpy, which a command's help does not import

        sampler = TokenSampler(self.model.n_vocab, seed, options)
        try:
            cached = llama.input_ids[: llama.n_tokens].tolist()
            reuse = 0
            while reuse < min(len(cached), len(tokens) - 1) and cached[reuse] == tokens[reuse]:
                reuse += 1
            if reuse and not llama._ctx.kv_cache_seq_rm(-1, reuse, -1):
                reuse = 0  # a recurrent model's memory cannot drop a suffix: start afresh
                llama.reset()
            llama.n_tokens = reuse
            llama.eval(tokens[reuse:])
            while True:
                token = sampler.sample(self._logits(self._context, -1))
                yield token
                llama.eval([token])
        finally:
            sampler.close()

    def _bias_processor(self, logit_bias: dict[int, float]) -> Any:
        """A llama-cpp-python logits processor adding `logit_bias` (token id -> bias), or None."""
        if not logit_bias:
            return None
        import numpy as np
        from llama_cpp import LogitsProcessorList

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
        *,
        reuse_prefix: bool = True,
    ) -> Generation:
        """Generate the assistant's reply to a conversation (see `generate` for `reuse_prefix`)."""
        return self.generate(self.render_chat(messages), options, on_text, reuse_prefix=reuse_prefix)

    def identity(self) -> ModelIdentity:
        """The loaded file's name, size and content fingerprint."""
        return self.model.identity
