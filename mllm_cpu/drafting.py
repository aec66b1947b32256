"""Speculative decoding through llama-cpp-python's draft-model hook: a draft GGUF or prompt lookup.

A draft proposes the next few tokens; the target model evaluates them in one batch and keeps
the longest prefix it would have produced itself, plus one token of its own. At temperature 0
the output is exactly the target's greedy output; the gain is that one batched evaluation of
k tokens costs far less than k single-token ones (see docs/DESIGN.md, "Drafting").
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from llama_cpp.llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log, last_error
from mllm_cpu.load_check import prepare_load
from mllm_cpu.model_file import validate_model_file

DEFAULT_DRAFT_TOKENS = 4
CALIBRATION_TOKENS = 8


def vocabulary_fingerprint(llama: Any) -> tuple[int, str]:
    """(vocabulary size, hash of every token's text) of a loaded `llama_cpp.Llama`."""
    model = llama._model
    digest = hashlib.sha256()
    for token in range(model.n_vocab()):
        digest.update(model.token_get_text(token).encode("utf-8", errors="replace") + b"\0")
    return model.n_vocab(), digest.hexdigest()


class DraftModel(LlamaDraftModel):
    """Greedy proposals from a second, smaller GGUF with the same tokenizer as the target.

    The draft keeps its own KV cache; each call evaluates only the tokens the target accepted
    since the last call, then `tokens` new ones.
    """

    def __init__(self, path: Path, *, n_ctx: int, threads: int, tokens: int = DEFAULT_DRAFT_TOKENS) -> None:
        import llama_cpp

        self.path = Path(path)
        self.model = validate_model_file(self.path)
        prepare_load(self.path)
        self.tokens = tokens
        with captured_llama_log() as log:
            try:
                self.llama = llama_cpp.Llama(
                    str(self.path),
                    n_ctx=n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    use_mmap=True,
                    verbose=False,
                )
            except ValueError:
                raise InputError(f"llama.cpp could not load the draft {path}: {last_error(log)}") from None
        self._vocab = self.llama._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog

    def check_tokenizer(self, target: Any, target_name: str) -> None:
        """InputError unless the draft's vocabulary (size and token texts) equals the target's."""
        mine, theirs = vocabulary_fingerprint(self.llama), vocabulary_fingerprint(target)
        if mine != theirs:
            detail = f"{mine[0]} tokens vs {theirs[0]}" if mine[0] != theirs[0] else "same size, other token texts"
            raise InputError(
                f"draft {self.path.name} has another tokenizer than {target_name} ({detail}); "
                "a draft must share the target's vocabulary"
            )

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        proposed: list[int] = []
        stream = self.llama.generate(input_ids.tolist(), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True)
        try:
            for token in stream:
                if self._is_eog(self._vocab, token):
                    break
                proposed.append(token)
                if len(proposed) >= self.tokens:
                    break
        finally:
            stream.close()
        return np.array(proposed, dtype=np.intc)


@dataclass
class DraftStats:
    """What the drafts of one generation did: verification rounds, proposed and accepted tokens."""

    rounds: int = 0
    drafted: int = 0
    generated: int = 0

    @property
    def accepted(self) -> int:
        """Drafted tokens the target kept: every round yields its accepted drafts plus one own token."""
        return max(0, min(self.drafted, self.generated - self.rounds))

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted, None when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted else None

    def add(self, other: DraftStats) -> DraftStats:
        """The sum of two generations' statistics."""
        return DraftStats(self.rounds + other.rounds, self.drafted + other.drafted, self.generated + other.generated)


class CountingDraft(LlamaDraftModel):
    """Wraps a draft (a model or prompt lookup) and counts its rounds and proposed tokens."""

    def __init__(self, inner: LlamaDraftModel, kind: str) -> None:
        self.inner = inner
        self.kind = kind
        self.stats = DraftStats()

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        proposed = self.inner(input_ids, **kwargs)
        self.stats.rounds += 1
        self.stats.drafted += len(proposed)
        return proposed

    def take_stats(self, generated: int) -> DraftStats:
        """The statistics since the last call (for a generation of `generated` tokens); resets the counts."""
        stats, self.stats = self.stats, DraftStats()
        stats.generated = generated
        return stats


def lookup_draft(tokens: int) -> LlamaPromptLookupDecoding:
    """Prompt-lookup decoding: propose the `tokens` that followed the last match of the latest n-gram."""
    return LlamaPromptLookupDecoding(num_pred_tokens=tokens)


def attach_draft(llama: Any, drafting: CountingDraft, target_name: str) -> float:
    """Finish setting up a target `llama` loaded with `draft_model=drafting`; returns its plain tokens/s.

    Checks that a draft model shares the target's tokenizer. llama-cpp-python keeps the logits
    of every context position when drafting (0.5 MB per token with a 128k vocabulary); only
    the sampler's logits inside llama.cpp are used, so the copy goes to one reused row
    (docs/DESIGN.md, "Drafting"). The plain speed, for the speed-up, is timed on a few
    single-token decodes.
    """
    if isinstance(drafting.inner, DraftModel):
        drafting.inner.check_tokenizer(llama, target_name)
    row = np.empty(llama.n_vocab(), dtype=np.single)
    llama.scores = np.lib.stride_tricks.as_strided(
        row, shape=(llama.n_ctx(), row.shape[0]), strides=(0, row.strides[0])
    )
    llama.reset()
    llama.eval([llama.token_bos()])
    start = time.perf_counter()
    for _ in range(CALIBRATION_TOKENS):
        llama.eval([llama.token_bos()])
    seconds = time.perf_counter() - start
    llama.reset()
    return CALIBRATION_TOKENS / seconds if seconds > 0 else 0.0
