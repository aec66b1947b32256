"""llama.cpp's logits of a converted file, and the tolerances they are compared with transformers' under."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np

from helpers.checkpoints import TOKENIZER_CORPUS, load_tokenizer

F32_KV = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}

# Unit roundoff of each weight format. Q8_0 stores 1/127 of a block's max per step
# (half a step = 1/254), and llama.cpp's CPU kernels also quantize the activations to
# Q8 for that dot product, so its error budget is doubled.
UNIT_ROUNDOFF = {"f16": 2.0**-11, "bf16": 2.0**-8, "q8_0": 2 / 254}
# Rounding errors add up over the layers and over 64..512-long dot products: measured
# max errors are 2..12 unit roundoffs times the largest logit; 20 leaves room, while a
# wrong mapping (RoPE order, missing q/k norm) moves logits by whole units.
ERROR_BUDGET = 20


def prompt_ids(folder: Path, count: int) -> list[int]:
    """The first `count` token ids of the tokenizer corpus, tokenized by the checkpoint's tokenizer."""
    ids = load_tokenizer(folder).encode(" ".join(TOKENIZER_CORPUS)).ids
    assert len(ids) >= count
    return ids[:count]


def llama_logits(path: Path, ids: list[int], **kwargs: int) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (kwargs go to `llama_cpp.Llama`, e.g. F32_KV)."""
    model = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False, **kwargs)
    model.eval(ids)
    return np.array(model.scores[: len(ids)], dtype=np.float32)


def assert_clear_top1_kept(got: np.ndarray, reference: np.ndarray) -> None:
    """Where the reference leads by 2+ logits (at least 5 positions), 80% of top-1 tokens agree; r > 0.8."""
    ordered = np.sort(reference, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > 2.0
    assert clear.sum() >= 5
    assert (got.argmax(1) == reference.argmax(1))[clear].mean() >= 0.8
    assert np.corrcoef(got.ravel(), reference.ravel())[0, 1] > 0.8
