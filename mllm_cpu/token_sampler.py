"""Pick the next token from llama.cpp's logits, as llama-cpp-python's sampler chain does, faster.

llama-cpp-python samples with llama.cpp's chain (penalties, top-k, typical, top-p, min-p,
temperature, seeded draw), which first copies all 128k logits into an array of candidates and
partially sorts it: about 0.3 ms per token, 4% of a 140M model's decode on a laptop core. Here
the top-k candidates are found with numpy in a fraction of that, and llama.cpp's own top-p,
min-p, temperature and seeded draw run on those k candidates only, so a seed picks the same
tokens as llama-cpp-python (tests/test_sampling.py checks it). See docs/DESIGN.md.
"""

from __future__ import annotations

import ctypes
from collections import deque
from typing import Any

import numpy as np

from mllm_cpu.grammar_check import GRAMMAR_ROOT
from mllm_cpu.sampling import SamplingOptions

PENALTY_WINDOW = 64
"""Sampled tokens the repeat penalty looks back on (llama-cpp-python's last_n_tokens_size)."""
_COLUMNS = 1024
"""TopK lays the logits out in rows of about this many columns."""
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
"""llama.cpp's llama_token_data."""


def logits_view(logits_pointer: Any, n_vocab: int) -> np.ndarray:
    """The `n_vocab` float logits at `logits_pointer` (llama_get_logits_ith) as an array, without a copy."""
    return np.ctypeslib.as_array(ctypes.cast(logits_pointer, ctypes.POINTER(ctypes.c_float)), (n_vocab,))


class TopK:
    """Finds the indices of the k largest logits of a vocabulary, largest first."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        divisors = [c for c in range(_COLUMNS // 2, 2 * _COLUMNS + 1) if n_vocab % c == 0]
        self.columns = min(divisors, key=lambda c: abs(c - _COLUMNS)) if divisors else _COLUMNS
        rows = -(-n_vocab // self.columns)
        self._grid = None if divisors else np.full(rows * self.columns, -np.inf, dtype=np.float32)
        self._cells = np.arange(rows)[:, None] * self.columns

    def __call__(self, logits: np.ndarray, k: int) -> np.ndarray:
        """Lay the logits out as rows of about 1024 columns: the k largest values all lie in the k
        columns with the largest maxima (a value outside them is beaten by those k maxima), so
        only those columns are searched. No copy when the vocabulary divides into such rows."""
        n, columns = self.n_vocab, self.columns
        if 8 * k > columns or n < 8 * columns:
            best = np.argpartition(logits, n - k)[n - k :]
        else:
            grid = logits
            if self._grid is not None:
                self._grid[:n] = logits
                grid = self._grid
            top_columns = np.argpartition(grid.reshape(-1, columns).max(axis=0), columns - k)[columns - k :]
            candidates = (self._cells + top_columns).ravel()
            values = grid[candidates]
            best = candidates[np.argpartition(values, len(values) - k)[len(values) - k :]]
        return best[np.argsort(-logits[best], kind="stable")]


class TokenSampler:
    """One generation's sampler: logit bias and repeat penalty in numpy, top-k in numpy, then
    llama.cpp's top-p, min-p, temperature and seeded draw on the k candidates."""

    def __init__(self, n_vocab: int, seed: int, options: SamplingOptions) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.n_vocab = n_vocab
        self.greedy = options.temperature <= 0
        self.top_k = options.top_k if 0 < options.top_k < n_vocab else n_vocab
        self._top_k = TopK(n_vocab)
        self.repeat_penalty = options.repeat_penalty
        self.recent: deque[int] = deque(maxlen=PENALTY_WINDOW)
        bias = options.logit_bias
        self.bias_ids = np.fromiter(bias, dtype=np.int64, count=len(bias))
        self.bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for sampler in (
            llama_cpp.llama_sampler_init_top_p(options.top_p, 1),
            llama_cpp.llama_sampler_init_min_p(options.min_p, 1),
            llama_cpp.llama_sampler_init_temp(options.temperature),
            llama_cpp.llama_sampler_init_dist(seed),
        ):
            llama_cpp.llama_sampler_chain_add(self.chain, sampler)

    def close(self) -> None:
        """Free llama.cpp's samplers (idempotent)."""
        if self.chain is not None:
            self._llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self) -> None:
        self.close()

    def sample(self, logits_pointer: Any) -> int:
        """The next token from the float logits at `logits_pointer` (llama_get_logits_ith)."""
        logits = logits_view(logits_pointer, self.n_vocab)
        if len(self.bias_ids) or (self.repeat_penalty != 1.0 and self.recent):
            logits = self._adjusted(logits)
        token = int(np.argmax(logits)) if self.greedy else self._draw(logits)
        self.recent.append(token)
        return token

    def _adjusted(self, logits: np.ndarray) -> np.ndarray:
        """A copy of the logits with the bias added and the repeat penalty applied (llama.cpp's rule:
        a recent token's logit is divided by the penalty if positive, multiplied if not)."""
        adjusted = logits.copy()
        if len(self.bias_ids):
            adjusted[self.bias_ids] += self.bias_values
        if self.repeat_penalty != 1.0 and self.recent:
            ids = np.fromiter(set(self.recent), dtype=np.int64)
            values = adjusted[ids]
            adjusted[ids] = np.where(values <= 0, values * self.repeat_penalty, values / self.repeat_penalty)
        return adjusted

    def _draw(self, logits: np.ndarray) -> int:
        llama_cpp = self._llama_cpp
        every_token = self.top_k >= self.n_vocab
        best = np.arange(self.n_vocab) if every_token else self._top_k(logits, self.top_k)
        candidates = np.zeros(len(best), dtype=TOKEN_DATA)
        candidates["id"] = best
        candidates["logit"] = logits[best]
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            size=len(best),
            selected=-1,
            sorted=not every_token,
        )
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        token = int(candidates["id"][array.selected])
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token


class GrammarConstraint:
    """A logits processor for llama-cpp-python that applies a (checked) grammar with llama.cpp's grammar
    sampler: tokens the grammar rejects get -inf, the token sampled is accepted at the next step, and
    when no token is allowed the reply ends (the end-of-sequence token is the only one left)."""

    def __init__(self, llama: Any, text: str) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._sampler = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, text.encode("utf-8"), GRAMMAR_ROOT)
        if not self._sampler:
            raise ValueError("llama.cpp cannot parse this grammar")
        self._end = llama.token_eos()
        self._candidates = np.zeros(llama.n_vocab(), dtype=TOKEN_DATA)
        self._candidates["id"] = np.arange(llama.n_vocab())
        self._seen: int | None = None
        self.dead_end = False

    def __call__(self, input_ids: Any, scores: np.ndarray) -> np.ndarray:
        llama_cpp = self._llama_cpp
        if self._seen is not None and len(input_ids) > self._seen:
            llama_cpp.llama_sampler_accept(self._sampler, int(input_ids[-1]))
        self._seen = len(input_ids)
        candidates = self._candidates
        candidates["logit"] = scores
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))
        rejected = np.isneginf(candidates["logit"])
        scores[rejected] = -np.inf
        if rejected.all():  # a dead end (or every allowed token already at -inf): end the reply
            self.dead_end = True
            scores[self._end] = 0.0
        return scores

    def close(self) -> None:
        """Free llama.cpp's grammar sampler (idempotent)."""
        if self._sampler:
            self._llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()
