"""`mllm-cpu quality` on a tiny trained model: llama-perplexity's numbers, checked against transformers.

Random weights make a quant ladder meaningless (every level's KL is large and noisy), so the
ladder is measured on a tiny Llama4 model trained on the built-in evaluation text.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers.checkpoints import BOS_ID, TINY_VOCAB_SIZE, TinyShape, load_tokenizer, reference_logits
from helpers.cli_runner import MLLM_CPU, error_lines, files_in, run_cli
from helpers.trained_models import trained_checkpoint
from mllm_cpu.bench.quality import default_text, text_tokens

SHAPE = TinyShape(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
N_CTX = 128
CHUNKS = 6
LADDER = "f16,q8_0,q6_k,q4_k_m,q2_k"
WORDS_PER_EXAMPLE = 20

# Mean KL bound for Q8_0, in nats. Q8_0 stores blocks of 32 weights as int8 times one scale
# d = max|w| / 127; rounding errs by at most d/2, an RMS of d / sqrt(12). With the block
# maximum at most 3.5 times the RMS weight, the relative RMS error per weight is at most
# 3.5 / (127 sqrt(12)) = 0.008, and llama.cpp rounds the activations of each product to
# Q8_0 too: 0.011 per matrix product. The model has 7 products per layer plus the output,
# 15 here; if their errors add in quadrature, the logits move by at most
# eps = sqrt(15) * 0.011 = 0.044 of their spread. For a small perturbation dz of the logits,
# KL(p || q) = Var_p(dz) / 2 + O(dz^3) <= eps^2 * s^2 / 2, where s^2 is the variance of the
# reference's logits over the vocabulary (the largest variance dz can reach if it scales with
# them): the bound is computed below from transformers' logits of the scored tokens.
Q8_0_RELATIVE_LOGIT_ERROR = math.sqrt(7 * SHAPE.num_hidden_layers + 1) * math.sqrt(2) * 3.5 / (127 * math.sqrt(12))


def _examples() -> list[tuple[str, str]]:
    """The evaluation text in pieces of a few words: plain language modelling."""
    words = default_text().text.split(" ")
    return [("", " ".join(words[i : i + WORDS_PER_EXAMPLE])) for i in range(0, len(words), WORDS_PER_EXAMPLE)]


@pytest.fixture(scope="module")
def trained() -> Path:
    """A 2-layer, width-256 model trained briefly on the evaluation text (cached between runs)."""
    return trained_checkpoint("quality-ladder", SHAPE, _examples(), steps=120, batch_size=8)


@pytest.fixture(scope="module")
def ladder(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`mllm-cpu quality CHECKPOINT --json` over the ladder, converted into a store of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLLM_CPU_HOME", str(tmp_path_factory.mktemp("quality_home")))
        result = run_cli(
            "quality", str(trained), "--quant", LADDER, "--ctx", str(N_CTX), "--chunks", str(CHUNKS), "--json"
        )
        assert result.returncode == 0, result.stderr
        yield json.loads(result.stdout)


def _level(run: dict[str, Any], quant: str) -> dict[str, Any]:
    (level,) = [level for level in run["levels"] if level["quant"] == quant]
    return level


def _transformers_scores(folder: Path, gguf: Path) -> tuple[float, float]:
    """Perplexity by llama-perplexity's chunking from transformers' float32 logits, and the mean
    variance of those logits over the vocabulary at the scored positions."""
    tokens = text_tokens(gguf, [], default_text())
    hf_tokens = [BOS_ID, *load_tokenizer(folder).encode(default_text().text, add_special_tokens=False).ids]
    assert tokens == hf_tokens
    first = N_CTX // 2
    nll, variances = [], []
    for chunk in range(CHUNKS):
        ids = tokens[chunk * N_CTX : (chunk + 1) * N_CTX]
        ids[0] = BOS_ID
        logits = reference_logits(folder, ids).astype(np.float64)[first : N_CTX - 1]
        log_p = logits - logits.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        targets = np.asarray(ids[first + 1 : N_CTX])
        nll.extend(-log_p[np.arange(len(targets)), targets])
        variances.extend(logits.var(axis=1))
    return math.exp(float(np.mean(nll))), float(np.mean(variances))


def test_perplexity_equals_transformers_and_kl_grows_down_the_ladder(ladder: dict[str, Any], trained: Path) -> None:
    reference = _level(ladder, "F32")
    assert reference["reference"] and ladder["parameters"]["chunks"] == CHUNKS
    assert reference["scores"]["tokens"] == CHUNKS * (N_CTX - 1 - N_CTX // 2)
    ppl, logit_variance = _transformers_scores(trained, Path(reference["path"]))
    # F32 computes what transformers computes; F16 rounds weights and activations to 11 bits
    assert reference["scores"]["ppl"] == pytest.approx(ppl, rel=1e-4)
    assert _level(ladder, "F16")["scores"]["ppl"] == pytest.approx(ppl, rel=2e-3)
    assert ppl < TINY_VOCAB_SIZE / 8, "the model is not trained: the ladder would be noise"

    assert reference["scores"]["kl_mean"] == pytest.approx(0, abs=1e-6)
    assert reference["scores"]["same_top"] == 1.0
    kl = {quant: _level(ladder, quant)["scores"]["kl_mean"] for quant in ("F16", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K")}
    assert kl["F16"] < kl["Q8_0"] < kl["Q6_K"] < kl["Q4_K_M"] < kl["Q2_K"], kl
    bound = Q8_0_RELATIVE_LOGIT_ERROR**2 * logit_variance / 2
    assert kl["Q8_0"] < bound, (kl["Q8_0"], bound)
    for quant in ("Q8_0", "Q6_K", "Q4_K_M", "Q2_K"):
        scores = _level(ladder, quant)["scores"]
        assert scores["kl_p99"] >= scores["kl_mean"] > 0 and 0 < scores["same_top"] < 1 + 1e-12
        assert math.exp(scores["ln_ppl_ratio"]) == pytest.approx(scores["ppl"] / reference["scores"]["ppl"])
    assert _level(ladder, "Q2_K")["scores"]["same_top"] < _level(ladder, "Q8_0")["scores"]["same_top"]
    assert sum(_level(ladder, "Q4_K_M")["type_mix"].values()) == _level(ladder, "Q4_K_M")["n_params"]
    assert {r["board"] for r in ladder["recommendations"]} == {"rpi4", "rpi5", "pi-zero-2", "laptop"}


def test_a_copy_of_the_reference_has_kl_zero_and_the_same_perplexity(ladder: dict[str, Any], tmp_path: Path) -> None:
    reference = Path(_level(ladder, "F32")["path"])
    copy = tmp_path / "copy-F32.gguf"
    shutil.copyfile(reference, copy)
    q8 = Path(_level(ladder, "Q8_0")["path"])
    result = run_cli(
        "quality", str(copy), str(q8), "--reference", str(reference), "--ctx", str(N_CTX), "--chunks", "3", "--csv"
    )
    assert result.returncode == 0, result.stderr
    rows = {row.split(",")[2]: row.split(",") for row in result.stdout.splitlines()[1:]}
    header = result.stdout.splitlines()[0].split(",")
    copied = dict(zip(header, rows[str(copy)], strict=True))
    original = dict(zip(header, rows[str(reference)], strict=True))
    assert original["reference"] == "true" and copied["reference"] == "false"
    assert abs(float(copied["kl_mean"])) < 1e-6 and float(copied["same_top"]) == 1.0
    assert float(copied["ppl"]) == pytest.approx(float(original["ppl"]), rel=1e-9)


def _mapped(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_ctrl_c_keeps_the_finished_levels(ladder: dict[str, Any], tmp_path: Path) -> None:
    """SIGINT while the second level is measured: exit 130, the reference and the first level kept."""
    f32, q8, q6, q2 = (Path(_level(ladder, quant)["path"]) for quant in ("F32", "Q8_0", "Q6_K", "Q2_K"))
    report = tmp_path / "ladder.json"
    arguments = [str(f32), str(q8), str(q6), str(q2), "--ctx", "16", "--chunks", "400", "--threads", "1"]
    arguments += ["--json", "--out", str(report)]
    process = subprocess.Popen([MLLM_CPU, "quality", *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # llama.cpp maps a file while it measures it (a pass of 400 chunks); reading a header
        # maps it for a millisecond
        held = 0
        while held < 3 and process.poll() is None:
            maps = _mapped(process.pid)
            held = held + 1 if q6.name in maps and q8.name not in maps and f32.name not in maps else 0
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    run = json.loads(report.read_text())
    assert run["interrupted"] is True
    measured = [level["quant"] for level in run["levels"]]
    assert measured[:2] == ["F32", "Q8_0"] and measured in (["F32", "Q8_0"], ["F32", "Q8_0", "Q6_K"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{ckpt}", "--quant", "q9_9"], "unknown quant type q9_9"),
        (["{f32}", "{q8}", "--reference", "{other}"], "is not the same model as the reference"),
        (["{f32}", "{q8}", "--text", "{empty}"], "the file is empty"),
        (["{f32}", "{q8}", "--text", "{short}"], "fewer than one chunk of --ctx 128"),
        (["{f32}", "{q8}", "--ctx", "4"], "--ctx must be at least 16"),
        (["{q8}"], "no F32 or BF16 or F16 file"),
    ],
)
def test_bad_input_is_one_line_and_no_output(
    arguments: list[str],
    message: str,
    ladder: dict[str, Any],
    trained: Path,
    tiny_ggufs: dict[str, Path],
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n")
    names = {
        "ckpt": trained,
        "f32": _level(ladder, "F32")["path"],
        "q8": _level(ladder, "Q8_0")["path"],
        "other": tiny_ggufs["f32"],
        "empty": empty,
        "short": short,
    }
    report = tmp_path / "out" / "ladder.json"
    report.parent.mkdir()
    filled = [a.format(**names) for a in arguments]
    if "--ctx" not in filled:
        filled += ["--ctx", str(N_CTX)]
    result = run_cli("quality", *filled, "--out", str(report))
    lines = error_lines(result)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert files_in(report.parent) == []
