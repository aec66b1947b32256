"""Tiny MobileLLM-R1-style checkpoints trained with torch on (prompt, completion) pairs.

Random weights cannot show behaviour (answers, agreement between two models, budgets), so
these checkpoints are trained for a few hundred steps on a synthetic task. Training is
seeded and runs on one thread (the models are small enough that more threads mostly spin on
a shared machine), so the weights depend only on the arguments; a
trained checkpoint is cached on disk under `$MLLM_CPU_TEST_CACHE` (default
`~/.cache/mllm-cpu-tests/`), keyed by a hash of everything that affects its weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import Llama4ForCausalLM

from helpers.checkpoints import BOS_ID, TINY_VOCAB_SIZE, TinyShape, _tokenizer_json, save_checkpoint, text_config

Example = tuple[str, str]
TRAINING_THREADS = 1
IGNORE = -100


def cache_root() -> Path:
    """Where trained checkpoints are kept between runs."""
    configured = os.environ.get("MLLM_CPU_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "mllm-cpu-tests"


def _cache_key(name: str, shape: TinyShape, examples: list[Example], settings: dict[str, float | int]) -> str:
    """A hash of everything the trained weights depend on, this file's training code included."""
    content = {
        "name": name,
        "shape": dataclasses.asdict(shape),
        "examples": examples,
        "settings": settings,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizer": hashlib.sha256(_tokenizer_json().encode()).hexdigest(),
        "trainer": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def encode_example(tokenizer: Tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Input ids and labels of one example: loss on the completion's tokens only.

    Prompt and completion are tokenized apart (special tokens in the text are parsed), as at
    generation time, where the prompt is tokenized and the completion is generated. An empty
    prompt trains plain language modelling on the completion after a BOS token.
    """
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else [BOS_ID]
    completion_ids = tokenizer.encode(completion, add_special_tokens=False).ids
    return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids


def _batch(encoded: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels of a batch."""
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.zeros((len(encoded), length), dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
    for row, (ids, targets) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, : len(targets)] = torch.tensor(targets)
    return input_ids, mask, labels


def _train(
    shape: TinyShape, examples: list[Example], *, steps: int, seed: int, lr: float, batch_size: int
) -> Llama4ForCausalLM:
    """Train a fresh model with AdamW (linear warm-up, cosine decay) on seeded shuffled batches."""
    tokenizer = Tokenizer.from_str(_tokenizer_json())
    encoded = [encode_example(tokenizer, prompt, completion) for prompt, completion in examples]
    torch.manual_seed(seed)
    model = Llama4ForCausalLM(text_config(shape))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / steps)).item())
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(encoded), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        input_ids, mask, labels = _batch([encoded[index] for index in chosen])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model.eval()


def trained_checkpoint(
    name: str,
    shape: TinyShape,
    examples: list[Example],
    *,
    steps: int,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 16,
) -> Path:
    """The folder of a checkpoint trained on `examples` (prompt, completion), from the cache or trained now.

    Saved like `build_checkpoint` saves (hub-style config.json, generation_config.json, the
    tiny tokenizer); written to a temporary folder and renamed, so a cached folder is whole.
    """
    if shape.vocab_size != TINY_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be {TINY_VOCAB_SIZE} to match the tiny tokenizer")
    if not examples or steps < 1:
        raise ValueError("training needs at least one example and one step")
    settings: dict[str, float | int] = {"steps": steps, "seed": seed, "lr": lr, "batch_size": batch_size}
    root = cache_root()
    folder = root / f"{name}-{_cache_key(name, shape, examples, settings)}"
    if (folder / "config.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        model = _train(shape, examples, steps=steps, seed=seed, lr=lr, batch_size=batch_size)
    finally:
        torch.set_num_threads(threads)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        save_checkpoint(model, staging)
        os.rename(staging, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
