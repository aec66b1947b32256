"""The engine's sampler: an exact top-k, and the same tokens as llama-cpp-python's chain for a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.token_sampler import TopK

MAX_TOKENS = 32


@pytest.mark.parametrize("n_vocab", [128256, 131071, 50000, 3000])
@pytest.mark.parametrize("k", [1, 20, 100, 400])
def test_top_k_finds_the_k_largest_in_order(n_vocab: int, k: int) -> None:
    rng = np.random.default_rng(n_vocab + k)
    logits = rng.normal(size=n_vocab).astype(np.float32)
    assert TopK(n_vocab)(logits, k).tolist() == np.argsort(-logits, kind="stable")[:k].tolist()


@pytest.mark.parametrize("n_vocab", [128256, 131071])
def test_top_k_when_the_largest_share_one_column_or_one_row(n_vocab: int) -> None:
    top_k = TopK(n_vocab)
    rng = np.random.default_rng(0)
    for stride in (top_k.columns, 1):
        logits = rng.normal(size=n_vocab).astype(np.float32)
        packed = np.arange(40) * stride + 3
        logits[packed] = 10 + rng.random(40).astype(np.float32)
        assert sorted(top_k(logits, 20).tolist()) == sorted(packed[np.argsort(-logits[packed])[:20]].tolist())


def test_top_k_reads_a_dividing_vocabulary_in_place_and_copies_another() -> None:
    assert TopK(128256).columns == 1002
    assert TopK(131071).columns == 1024, "a prime vocabulary is padded to rows of 1024"


def test_top_k_with_ties_returns_the_largest_values() -> None:
    logits = np.zeros(128256, dtype=np.float32)
    logits[::500] = 1.0
    chosen = TopK(128256)(logits, 20)
    assert len(set(chosen.tolist())) == 20 and all(logits[chosen] == 1.0)


OPTION_SETS = [
    SamplingOptions(seed=4, max_tokens=MAX_TOKENS),
    SamplingOptions(seed=7, max_tokens=MAX_TOKENS, temperature=1.5, top_k=40, top_p=0.8, min_p=0.05),
    SamplingOptions(seed=3, max_tokens=MAX_TOKENS, repeat_penalty=1.3),
    SamplingOptions(seed=3, max_tokens=MAX_TOKENS, temperature=0.0),
    SamplingOptions(seed=9, max_tokens=MAX_TOKENS, temperature=1.0, top_k=0),
    SamplingOptions(seed=9, max_tokens=MAX_TOKENS, logit_bias={5: 6.0, 77: 4.0, 1000: -50.0}),
]


@pytest.fixture(scope="module")
def engine(synthetic_tiny_gguf: Path) -> Engine:
    return Engine(synthetic_tiny_gguf, n_ctx=256, threads=1)


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: f"t{o.temperature}-k{o.top_k}-rp{o.repeat_penalty}")
def test_a_seed_picks_the_tokens_llama_cpp_python_picks(engine: Engine, options: SamplingOptions) -> None:
    prompt = "Compute: 1-2+3"
    ours = engine.generate(prompt, options, reuse_prefix=False).token_ids
    engine.llama.reset()
    engine.llama.set_seed(options.seed or 0)
    theirs: list[int] = []
    for token in engine.llama.generate(
        engine.tokenize(prompt),
        top_k=options.top_k,
        top_p=options.top_p,
        min_p=options.min_p,
        temp=options.temperature,
        repeat_penalty=options.repeat_penalty,
        logits_processor=engine._bias_processor(options.logit_bias),
    ):
        if engine.is_stop(token) or len(theirs) == MAX_TOKENS:
            break
        theirs.append(token)
    assert len(ours) >= MAX_TOKENS // 2
    assert ours == theirs
