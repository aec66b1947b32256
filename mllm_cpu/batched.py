"""Continuous batching on llama.cpp's batch API: many sequences in one context, one llama_decode per step.

`BatchedEngine` loads a model once and decodes up to `parallel` sequences together, as
llama.cpp's server does with `-np N`: one context whose KV cache holds every sequence (each
its own `seq_id`), and a loop on a thread of its own where each step is one `llama_decode`
over a `llama_batch` holding the next token of every sequence that is generating, plus chunks
of the prompts of sequences that are joining. Sequences join and leave between steps; while
others stream, a joining prompt is evaluated at most `PREFILL_WHILE_DECODING` tokens per step,
so running streams keep their pace.

The KV cache is unified (`kv_unified`): its cells are shared by all sequences, so the prompt
prefix that consecutive requests share (the task preset's system prompt and the chat
template's header) is evaluated once and its cells are given to each sequence that starts
with it (`llama_memory_seq_cp`, which with a unified cache copies no data). The prefix is
kept under a sequence id of its own. The cache has `parallel * n_ctx + PREFIX_LIMIT` cells, so
every sequence has its whole context whatever the others hold.

Per sequence: its own sampler (`TokenSampler`: seed, options, logit bias, repeat penalty),
stop tokens and stop texts, `max_tokens`, an optional grammar, an optional thinking budget
with its forced answer (the same steps as `budget.generate_with_budget`, inside the loop: the
trace stops at the budget, the cue is evaluated as a prompt chunk of that sequence and the
answer follows), cancellation and timing. Each sequence's events (`Piece`, then `Finished` or
`Failed`) come from its `Stream`. The engine is also a `Backend` (`chat`), so a batch solves
several problems at once by calling `chat` from several threads.
"""

from __future__ import annotations

import atexit
import codecs
import ctypes
import queue
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mllm_cpu.budget import (
    AfterBudget,
    BudgetedGeneration,
    ThinkingBudget,
    after_budget,
    answer_cue,
    joined_generation,
    split_tokens,
)
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log, last_error
from mllm_cpu.engine import FLASH_ATTENTION, Generation, PromptTooLong, StopReason, context_length
from mllm_cpu.hardware import available_memory_bytes, physical_cores
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.load_check import prepare_load
from mllm_cpu.model_file import ModelFile, validate_model_file
from mllm_cpu.prompt_format import Message, PromptFormat
from mllm_cpu.sampling import SamplingOptions, sampling_defaults
from mllm_cpu.stop_text import StopTextFilter
from mllm_cpu.tasks import TaskPreset

N_BATCH = 512
"""Tokens one step evaluates at most: the single-sequence Engine's batch (llama-cpp-python's n_batch)."""
PREFILL_WHILE_DECODING = 64
"""Prompt tokens a step evaluates while other sequences stream: a step then takes a few decode steps'
time, not a whole prompt's."""
PREFIX_LIMIT = 1024
"""The longest shared prompt prefix kept in the cache for later sequences."""
MIN_SHARED_GAIN = 16
"""A request waits for a prompt being evaluated when it shares at least this many more tokens with it
than with the kept prefix (it then copies those cells instead of evaluating them again)."""
MAX_PARALLEL = 64
"""The most sequences one engine decodes together."""
DEFAULT_PARALLEL_PER_CORE = 2
DEFAULT_PARALLEL_CAP = 4
"""`--parallel` by default: two sequences per core, at most four (a CPU's decode is bound by memory
bandwidth, so a few sequences cost little more than one), fewer when their KV cache does not fit."""
MEMORY_SHARE = 0.8
"""The share of available memory the weights and the KV cache of the default `--parallel` may take."""
F16_BYTES = 2
_PIECE_BYTES = 64


def kv_bytes_per_token(model: ModelFile) -> int:
    """The F16 KV cache one token of context takes: K and V for every layer, KV head and head dimension."""
    return 2 * model.n_layer * model.n_head_kv * model.head_dim * F16_BYTES


def default_parallel(model: ModelFile, n_ctx: int, cores: int | None = None, memory: int | None = None) -> int:
    """Sequences to decode together by default: two per core, at most four, as many as fit in memory."""
    cores = cores if cores is not None else physical_cores()
    memory = memory if memory is not None else available_memory_bytes()
    wanted = max(1, min(DEFAULT_PARALLEL_CAP, DEFAULT_PARALLEL_PER_CORE * cores))
    room = MEMORY_SHARE * memory - model.path.stat().st_size
    per_sequence = kv_bytes_per_token(model) * n_ctx
    fits = int(room // per_sequence) if per_sequence > 0 else wanted
    return max(1, min(wanted, fits))


@dataclass(frozen=True)
class BatchRequest:
    """One sequence to generate: prompt token ids, sampling, stop texts, and an optional budget or grammar."""

    tokens: Sequence[int]
    options: SamplingOptions
    stop_texts: tuple[str, ...] = ()
    budget: ThinkingBudget | None = None
    preset: TaskPreset | None = None
    """The task whose answer cue a budget forces (needed with `budget`)."""
    grammar: str | None = None
    """A GBNF grammar (already checked, see mllm_cpu/grammar_check.py) the reply must follow."""


@dataclass(frozen=True)
class Piece:
    """A sampled token and the text it completes (often "", for a partial character or a held-back stop
    text); `token` is None for text that is no token: the forced answer's cue, a held-back tail."""

    text: str
    token: int | None = None


@dataclass(frozen=True)
class Finished:
    """The sequence ended: its Generation; with a budget, how it splits; the stop token that ended it."""

    generation: Generation
    budgeted: BudgetedGeneration | None = None
    stop_token: int | None = None


@dataclass(frozen=True)
class Failed:
    """The sequence could not go on (llama.cpp failed, or the engine closed)."""

    reason: str


Event = Piece | Finished | Failed


class EngineFailed(RuntimeError):
    """A sequence of the batched engine failed; the message says why."""


class Stream:
    """The events of one submitted sequence, in order; `cancel()` ends it at the next step."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._wake = wake
        self.cancelled = False

    def put(self, event: Event) -> None:
        """Called by the engine's loop."""
        self._events.put(event)

    def cancel(self) -> None:
        """Ask the engine to end the sequence (it finishes as "interrupted")."""
        self.cancelled = True
        self._wake()

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._events.get()
            yield event
            if not isinstance(event, Piece):
                return


class _Phase(Enum):
    PLAIN = "plain"
    TRACE = "trace"
    """A budgeted reply's reasoning, up to the budget."""
    REST = "rest"
    """After the budget, the reasoning having ended: unforced."""
    ANSWER = "answer"
    """The forced answer after the cue."""


class _Part:
    """One stretch of generation with its own sampler, as one `Engine.generate` call."""

    def __init__(
        self, engine: BatchedEngine, options: SamplingOptions, prompt_tokens: int, stop_texts: tuple[str, ...]
    ) -> None:
        from mllm_cpu.token_sampler import TokenSampler  # numpy, which `serve --help` does not import

        seed = options.seed if options.seed is not None else random.randrange(2**31)
        self.sampler = TokenSampler(engine.model.n_vocab, seed, options)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop_text = StopTextFilter(stop_texts)
        room = engine.n_ctx - prompt_tokens
        self.limit = max(0, min(options.max_tokens, room))
        self.stop_reason = StopReason.LENGTH if self.limit == options.max_tokens else StopReason.CONTEXT
        self.prompt_tokens = prompt_tokens
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self.start = time.perf_counter()
        self.first_token_at: float | None = None
        self.stop_token: int | None = None

    def generation(self) -> Generation:
        end = time.perf_counter()
        first = self.first_token_at if self.first_token_at is not None else end
        self.sampler.close()
        return Generation(
            text="".join(self.pieces),
            prompt_tokens=self.prompt_tokens,
            generated_tokens=len(self.tokens),
            prompt_seconds=first - self.start,
            generation_seconds=end - first,
            stop_reason=self.stop_reason,
            token_ids=self.tokens,
        )


class _Grammar:
    """A checked grammar applied to one sequence's logits (mllm_cpu.token_sampler's GrammarConstraint)."""

    def __init__(self, engine: BatchedEngine, text: str) -> None:
        from mllm_cpu.token_sampler import GrammarConstraint, logits_view

        self._logits_view = logits_view
        vocabulary = SimpleNamespace(
            _model=SimpleNamespace(vocab=engine.vocab),
            token_eos=lambda: engine.eos,
            n_vocab=lambda: engine.model.n_vocab,
        )
        self.constraint = GrammarConstraint(vocabulary, text)

    def apply(self, tokens: list[int], logits_pointer: Any, n_vocab: int) -> None:
        self.constraint(tokens, self._logits_view(logits_pointer, n_vocab))


class _Sequence:
    """A sequence in the batch: where it is in the cache, what it still has to evaluate, its current part."""

    def __init__(self, engine: BatchedEngine, seq_id: int, request: BatchRequest, stream: Stream, shared: int) -> None:
        self.seq_id = seq_id
        self.request = request
        self.stream = stream
        self.pos = shared
        self.pending = list(request.tokens[shared:])
        self.prompt_done = False
        self.streaming = False
        self.history = list(request.tokens)
        """Prompt and generated tokens (what a grammar has seen)."""
        self.phase = _Phase.TRACE if request.budget is not None else _Phase.PLAIN
        options = request.options
        if request.budget is not None:
            options = replace(options, max_tokens=min(request.budget.tokens, options.max_tokens))
        self.part = _Part(engine, options, len(request.tokens), request.stop_texts)
        self.first: Generation | None = None
        self.cue = ""
        self.grammar = _Grammar(engine, request.grammar) if request.grammar else None


class BatchedEngine:
    """A loaded model decoding up to `parallel` sequences together (see the module's docstring)."""

    def __init__(self, path: Path, *, parallel: int, n_ctx: int | None = None, threads: int | None = None) -> None:
        """Validate and load a GGUF; `n_ctx` is each sequence's context (default as `Engine`'s)."""
        import llama_cpp

        if not 1 <= parallel <= MAX_PARALLEL:
            raise InputError(f"--parallel must be between 1 and {MAX_PARALLEL}, got {parallel}")
        self.model: ModelFile = validate_model_file(Path(path))
        prepare_load(self.model.path)
        self.n_ctx = context_length(self.model, n_ctx)
        self.parallel = parallel
        self.threads = threads or physical_cores()
        if self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        self.n_batch = min(self.n_ctx, N_BATCH)
        self._llama_cpp = llama_cpp
        llama_cpp.llama_backend_init()
        with captured_llama_log() as log:
            self._handle = llama_cpp.llama_model_load_from_file(
                str(self.model.path).encode(), llama_cpp.llama_model_default_params()
            )
        if not self._handle:
            raise InputError(f"llama.cpp could not load {path}: {last_error(log)}")
        self.vocab = llama_cpp.llama_model_get_vocab(self._handle)
        self._context = self._new_context()
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        header = self.model.header
        self.stop_ids = {
            int(header.get(key))
            for key in (gguf_keys.EOS_ID, gguf_keys.EOT_ID, gguf_keys.EOM_ID)
            if header.get(key) is not None
        }
        self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))
        self._bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.prompt_format = PromptFormat(header, self, self.vocab)
        self._pieces: dict[int, bytes] = {}
        self._prefix_seq = parallel
        self._prefix: list[int] = []
        self._free_ids = list(range(parallel - 1, -1, -1))
        self._active: list[_Sequence] = []
        self._waiting: deque[tuple[BatchRequest, Stream]] = deque()
        self._condition = threading.Condition()
        self._closing = False
        self.decoded_tokens = 0
        """Tokens evaluated so far (prompts, cues, generated tokens): what the shared prefix saves shows here."""
        self._thread = threading.Thread(target=self._loop, name="batched-engine", daemon=True)
        self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    def _new_context(self) -> Any:
        llama_cpp = self._llama_cpp
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.parallel * self.n_ctx + PREFIX_LIMIT
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = self.parallel + 1
        params.kv_unified = True
        params.n_threads = self.threads
        params.n_threads_batch = self.threads
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if FLASH_ATTENTION else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        with captured_llama_log() as log:
            context = llama_cpp.llama_init_from_model(self._handle, params)
        if not context:
            llama_cpp.llama_model_free(self._handle)
            raise InputError(
                f"llama.cpp could not create a context for {self.parallel} sequences of {self.n_ctx} tokens: "
                f"{last_error(log)}"
            )
        return context

    def _warm_up(self) -> None:
        """Evaluate one token and forget it, as the single-sequence Engine does. On the loop's thread: llama.cpp's
        OpenMP threads serve the thread that computes, and a second thread computing (here, the one that loaded
        the model) makes them back off early at every barrier, which halved a single stream's decode speed."""
        self._fill([(self._bos, 0, 0, True)])
        self._llama_cpp.llama_decode(self._context, self._batch)
        self._llama_cpp.llama_memory_clear(self._memory, True)

    @property
    def weight_bytes(self) -> int:
        """The bytes of the model's tensors as llama.cpp holds them."""
        return int(self._llama_cpp.llama_model_size(self._handle))

    # the Backend side

    def default_options(self) -> SamplingOptions:
        """The sampling defaults, with the file's `general.sampling.*` values applied."""
        return sampling_defaults(self.model.header.metadata)

    def identity(self) -> ModelIdentity:
        """The loaded file's name, size and content fingerprint."""
        return self.model.identity

    def is_stop(self, token: int) -> bool:
        """True for every end-of-generation token: eos, eot, eom and llama.cpp's EOG set."""
        return token in self.stop_ids or bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def render_chat(self, messages: list[Message]) -> str:
        """The prompt text for a conversation, by the file's chat template."""
        return self.prompt_format.render(messages)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt (as `Engine.tokenize`), refused when it surely does not fit the context."""
        return self.prompt_format.tokenize(text, limit=self.n_ctx)

    def detokenize(self, tokens: list[int]) -> bytes:
        """The bytes of token ids, special tokens as empty text (as llama-cpp-python's `detokenize`)."""
        data = b"".join(self._piece(token) for token in tokens)
        return data[1:] if tokens and tokens[0] == self._bos and data.startswith(b" ") else data

    def chat(
        self,
        messages: list[Message],
        options: SamplingOptions | None = None,
        on_text: Callable[[str], None] | None = None,
        *,
        reuse_prefix: bool = True,
    ) -> Generation:
        """The assistant's reply, generated in the batch with whatever else runs (`reuse_prefix` is moot:
        only a shared prompt prefix is reused, and the reply depends on prompt, options and seed)."""
        request = BatchRequest(
            self.tokenize(self.render_chat(messages)),
            options or self.default_options(),
            self.prompt_format.stop_texts,
        )
        return self.run(request, on_text).generation

    def run(self, request: BatchRequest, on_text: Callable[[str], None] | None = None) -> Finished:
        """Submit `request` and wait for it, passing its text to `on_text`; Ctrl-C (or an error in
        `on_text`) cancels the sequence. Raises EngineFailed when it fails."""
        stream = self.submit(request)
        events = iter(stream)
        try:
            for event in events:
                if isinstance(event, Piece):
                    if event.text and on_text:
                        on_text(event.text)
                elif isinstance(event, Finished):
                    return event
                else:
                    raise EngineFailed(event.reason)
        except KeyboardInterrupt:
            stream.cancel()
            for event in events:
                if isinstance(event, Finished):
                    return event
            raise
        except BaseException:
            stream.cancel()
            raise
        raise EngineFailed("the sequence ended without a result")

    # the batch side

    def submit(self, request: BatchRequest) -> Stream:
        """Queue a sequence; its events come from the returned Stream. Refuses a prompt that does not fit."""
        tokens = request.tokens
        if not tokens:
            raise InputError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise PromptTooLong(f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}")
        bad = [token for token in request.options.logit_bias if not 0 <= token < self.model.n_vocab]
        if bad:
            raise InputError(f"logit bias for token {bad[0]}, outside the vocabulary of {self.model.n_vocab}")
        if request.budget is not None and request.preset is None:
            raise InputError("a thinking budget needs the task whose answer it forces")
        stream = Stream(self._wake)
        with self._condition:
            if self._closing:
                raise EngineFailed("the engine is closed")
            self._waiting.append((request, stream))
            self._condition.notify()
        return stream

    @property
    def in_flight(self) -> int:
        """Sequences decoding or waiting."""
        return len(self._active) + len(self._waiting)

    def close(self) -> None:
        """End every sequence (as interrupted), stop the loop and free llama.cpp's context and model."""
        with self._condition:
            if self._closing:
                return
            self._closing = True
            self._condition.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        llama_cpp = self._llama_cpp
        llama_cpp.llama_batch_free(self._batch)
        with captured_llama_log():
            llama_cpp.llama_free(self._context)
            llama_cpp.llama_model_free(self._handle)

    def _wake(self) -> None:
        with self._condition:
            self._condition.notify()

    def _loop(self) -> None:
        self._warm_up()
        while True:
            with self._condition:
                while not self._closing and not self._waiting and not self._active:
                    self._condition.wait()
                if self._closing:
                    break
            try:
                self._step()
            except Exception as error:  # a bug or llama.cpp's failure: the sequences end, the loop goes on
                self._fail_all(f"{type(error).__name__}: {error}")
        for sequence in list(self._active):
            sequence.stream.cancel()
            self._finish_cancelled(sequence)
        with self._condition:
            waiting, self._waiting = list(self._waiting), deque()
        for _, stream in waiting:
            stream.put(Failed("the engine was closed"))

    def _step(self) -> None:
        """Admit waiting sequences, decode one batch, sample for every sequence whose input is evaluated."""
        for sequence in [s for s in self._active if s.stream.cancelled]:
            self._finish_cancelled(sequence)
        self._admit()
        if not self._active:
            return
        entries: list[tuple[int, int, int, bool]] = []
        outputs: list[tuple[_Sequence, int, int]] = []
        decoding = [s for s in self._active if len(s.pending) == 1]
        room = self.n_batch - len(decoding)
        if any(s.streaming for s in self._active):
            room = min(room, PREFILL_WHILE_DECODING)
        for sequence in self._active:
            if len(sequence.pending) == 1:
                take = 1
            else:
                take = min(len(sequence.pending), room)
                room -= take
            if take == 0:
                continue
            last = take == len(sequence.pending)
            for offset, token in enumerate(sequence.pending[:take]):
                entries.append((token, sequence.pos + offset, sequence.seq_id, last and offset == take - 1))
            outputs.append((sequence, len(entries) - 1 if last else -1, take))
        self._fill(entries)
        status = self._llama_cpp.llama_decode(self._context, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        self.decoded_tokens += len(entries)
        for sequence, index, taken in outputs:
            sequence.pending = sequence.pending[taken:]
            sequence.pos += taken
            if index >= 0:
                if not sequence.prompt_done:
                    sequence.prompt_done = True
                    self._keep_prefix(sequence)
                self._sample(sequence, index)

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Put (token, position, sequence id, wants logits) entries into the batch."""
        batch = self._batch
        for i, (token, pos, seq_id, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(entries)

    def _admit(self) -> None:
        """Start waiting sequences while ids are free, each on the cells of the prefix it shares."""
        while self._free_ids:
            with self._condition:
                if not self._waiting:
                    return
                request, stream = self._waiting[0]
                if stream.cancelled:
                    self._waiting.popleft()
                    stream.put(Finished(_empty_generation(request, StopReason.INTERRUPTED)))
                    continue
                tokens = list(request.tokens)
                shared = min(_common_prefix(self._prefix, tokens), len(tokens) - 1)
                if any(
                    not s.prompt_done and _common_prefix(list(s.request.tokens), tokens) >= shared + MIN_SHARED_GAIN
                    for s in self._active
                ):
                    return  # its prefix is being evaluated: copy it when done
                self._waiting.popleft()
            seq_id = self._free_ids.pop()
            try:
                sequence = _Sequence(self, seq_id, request, stream, shared)
            except Exception as error:  # e.g. a grammar llama.cpp refuses
                self._free_ids.append(seq_id)
                stream.put(Failed(str(error)))
                continue
            if shared:
                self._llama_cpp.llama_memory_seq_cp(self._memory, self._prefix_seq, seq_id, 0, shared)
            self._active.append(sequence)
            if sequence.part.limit == 0:
                self._end_part(sequence)

    def _keep_prefix(self, sequence: _Sequence) -> None:
        """Keep the start of a freshly evaluated prompt as the prefix later sequences may copy."""
        keep = list(sequence.request.tokens[:PREFIX_LIMIT])
        if keep == self._prefix:
            return
        llama_cpp = self._llama_cpp
        llama_cpp.llama_memory_seq_rm(self._memory, self._prefix_seq, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, sequence.seq_id, self._prefix_seq, 0, len(keep))
        self._prefix = keep

    def _sample(self, sequence: _Sequence, index: int) -> None:
        """Pick the sequence's next token from output `index` and act on it."""
        part = sequence.part
        logits = self._llama_cpp.llama_get_logits_ith(self._context, index)
        if sequence.grammar is not None:
            sequence.grammar.apply(sequence.history, logits, self.model.n_vocab)
        token = part.sampler.sample(logits)
        sequence.streaming = True
        if part.first_token_at is None:
            part.first_token_at = time.perf_counter()
        if self.is_stop(token):
            part.stop_reason = StopReason.EOS
            part.stop_token = token
            self._end_part(sequence)
            return
        part.tokens.append(token)
        sequence.history.append(token)
        text, stopped = part.stop_text.feed(part.decoder.decode(self._piece(token)))
        if text:
            part.pieces.append(text)
        sequence.stream.put(Piece(text, token))
        if stopped:
            part.stop_reason = StopReason.EOS
            self._end_part(sequence)
        elif len(part.tokens) >= part.limit:
            self._end_part(sequence)
        else:
            sequence.pending = [token]

    def _end_part(self, sequence: _Sequence) -> None:
        """A part ended: finish the sequence, or (under a thinking budget) go on to the next part."""
        part = sequence.part
        tail = part.stop_text.feed(part.decoder.decode(b"", final=True))[0] + part.stop_text.flush()
        if tail:
            part.pieces.append(tail)
            sequence.stream.put(Piece(tail))
        generation = part.generation()
        request = sequence.request
        budget, preset = request.budget, request.preset
        if sequence.phase == _Phase.PLAIN:
            self._finish(sequence, Finished(generation, stop_token=part.stop_token))
            return
        assert budget is not None and preset is not None
        if sequence.phase == _Phase.TRACE:
            ran_out = generation.stop_reason == StopReason.LENGTH and budget.tokens < request.options.max_tokens
            step = after_budget(generation.text, preset) if ran_out else None
            if step is None or step == AfterBudget.STOP:
                if step == AfterBudget.STOP:
                    generation = replace(generation, stop_reason=StopReason.BUDGET)
                self._finish_budgeted(sequence, generation, False, None, part.stop_token)
                return
            sequence.first = generation
            prompt = len(request.tokens) + generation.generated_tokens
            pending = [generation.token_ids[-1]]
            if step == AfterBudget.GO_ON:
                sequence.phase = _Phase.REST
                options = replace(request.options, max_tokens=request.options.max_tokens - generation.generated_tokens)
            else:
                sequence.phase = _Phase.ANSWER
                sequence.cue = answer_cue(generation.text, preset)
                sequence.stream.put(Piece(sequence.cue))
                cue_ids = self._tokenize_cue(sequence.cue)
                pending += cue_ids
                prompt += len(cue_ids)
                options = replace(request.options, max_tokens=budget.answer_tokens)
            sequence.part = _Part(self, options, prompt, request.stop_texts)
            sequence.pending = pending
            if sequence.part.limit == 0:
                self._end_part(sequence)
            return
        assert sequence.first is not None
        whole = joined_generation(sequence.first, generation, sequence.cue)
        forced = sequence.phase == _Phase.ANSWER
        self._finish_budgeted(sequence, whole, forced, generation.generated_tokens if forced else None, part.stop_token)

    def _finish_budgeted(
        self, sequence: _Sequence, generation: Generation, forced: bool, answer: int | None, stop_token: int | None
    ) -> None:
        assert sequence.request.preset is not None
        if answer is None:
            reasoning, answer = split_tokens(self.detokenize, generation, sequence.request.preset)
        else:
            reasoning = generation.generated_tokens - answer
        budgeted = BudgetedGeneration(generation, forced, reasoning, answer)
        self._finish(sequence, Finished(generation, budgeted, stop_token))

    def _finish_cancelled(self, sequence: _Sequence) -> None:
        part = sequence.part
        part.stop_reason = StopReason.INTERRUPTED
        generation = part.generation()
        if sequence.first is not None:
            generation = joined_generation(sequence.first, generation, sequence.cue)
        budgeted = None
        if sequence.request.preset is not None and sequence.request.budget is not None:
            reasoning, answer = split_tokens(self.detokenize, generation, sequence.request.preset)
            budgeted = BudgetedGeneration(generation, sequence.phase == _Phase.ANSWER, reasoning, answer)
        self._finish(sequence, Finished(generation, budgeted))

    def _finish(self, sequence: _Sequence, event: Event) -> None:
        """Send the last event, drop the sequence's cells and free its id."""
        self._llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        if sequence.grammar is not None:
            sequence.grammar.constraint.close()
        self._active.remove(sequence)
        self._free_ids.append(sequence.seq_id)
        sequence.stream.put(event)

    def _fail_all(self, reason: str) -> None:
        for sequence in list(self._active):
            sequence.part.sampler.close()
            self._finish(sequence, Failed(reason))

    def _tokenize_cue(self, cue: str) -> list[int]:
        """The cue's tokens, special tokens parsed, no BOS (as budget.py tokenizes it)."""
        data = cue.encode("utf-8")
        capacity = len(data) + 2
        buffer = (self._llama_cpp.llama_token * capacity)()
        count = self._llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, False, True)
        return list(buffer[: max(count, 0)])

    def _piece(self, token: int) -> bytes:
        """A token's text as bytes, special tokens as empty text (cached)."""
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(_PIECE_BYTES)
            count = self._llama_cpp.llama_token_to_piece(self.vocab, token, buffer, _PIECE_BYTES, 0, False)
            if count < 0:
                buffer = ctypes.create_string_buffer(-count)
                count = self._llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -count, 0, False)
            piece = self._pieces[token] = buffer.raw[: max(count, 0)]
        return piece


def _common_prefix(first: list[int], second: list[int]) -> int:
    """The number of leading tokens two lists share."""
    limit = min(len(first), len(second))
    if first[:limit] == second[:limit]:
        return limit
    low, high = 0, limit
    while low < high:  # the longest equal prefix, by halving
        middle = (low + high + 1) // 2
        if first[:middle] == second[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _empty_generation(request: BatchRequest, stop_reason: StopReason) -> Generation:
    return Generation("", len(request.tokens), 0, 0.0, 0.0, stop_reason)


def _close_at_exit(reference: weakref.ref[BatchedEngine]) -> None:
    """Stop a still running engine before the interpreter exits (its loop thread is inside llama.cpp)."""
    engine = reference()
    if engine is not None:
        engine.close()
