"""The quant ladder's quality: perplexity, KL divergence and top-1 agreement against a reference.

The definitions are llama-perplexity's (llama.cpp tools/perplexity/perplexity.cpp, functions
`perplexity` and `kl_divergence`, in the sources llama-cpp-python vendors):

- the text is tokenized once with the vocabulary's special tokens added (BOS) and special
  tokens in the text not parsed (`common_tokenize(ctx, text, true)`); one trailing newline
  of a text file is dropped, as `-f` does;
- it is cut into chunks of n_ctx tokens, n_chunk = n_tokens // n_ctx (at most --chunks);
  the rest is not used;
- each chunk is decoded as one batch from an empty cache, its first token replaced by BOS;
- logits are taken for positions first = n_ctx / 2 onwards; position j predicts token j + 1,
  so n_ctx - 1 - first tokens of each chunk are scored (255 at n_ctx 512);
- per scored token: nll = -log softmax(logits)[next token]; perplexity = exp(mean nll);
  KL = sum_i p_ref,i (log p_ref,i - log p_i); "same top" when the level's and the
  reference's most likely tokens agree (first maximum of each);
- means and uncertainties as llama-perplexity prints them: the standard error of a mean is
  sqrt((mean(x^2) - mean(x)^2) / (count - 1)) (0 below 11 values); PPL's is PPL times that
  of the mean nll; ln(PPL/PPL_ref) uses the covariance of the two nll series; same top's is
  sqrt(p (1 - p) / (count - 1)); the 99th percentile of KL interpolates linearly between
  sorted values (llama-perplexity's `percentile`, numpy's default).

One deliberate difference: llama-perplexity stores the reference's log-probabilities in 16
bits over a 16-nat range (steps of up to 2.4e-4 nats) and skips terms with log p_ref < -16;
here they are stored as float32 and every term counts, so a KL of 0 is 0.

Memory: the reference pass appends the scored rows' log-probabilities to a temporary float32
file (125 MiB per chunk for a 128256-token vocabulary at n_ctx 512, deleted at exit); each
level pass decodes a chunk and reads the stored rows back 16 at a time. No level's logits are
kept. Besides the weights, a pass holds llama.cpp's output buffer (the logits of positions
first..n_ctx-1: 256 x 128256 x 4 B = 125 MiB for the 950M at n_ctx 512) and its compute
buffer (252 MiB there: its logits tensor covers a whole 512-token ubatch, as in
llama-perplexity), plus about 50 MiB of float64 work rows.
"""

from __future__ import annotations

import datetime
import importlib.resources
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from mllm_cpu.convert.gguf_summary import summarize_header
from mllm_cpu.convert.pipeline import ConvertProgress, load_checkpoint
from mllm_cpu.convert.quant_types import QUANT_LEVELS, parse_quant_list
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import MIB
from mllm_cpu.hardware import physical_cores
from mllm_cpu.model_file import ModelFile, validate_model_file
from mllm_cpu.store import ConversionDisplay, resolve_model

from .boards import BOARDS, Board, fit_check, this_machine
from .llama_session import (
    ContextSettings,
    LoadedModel,
    OpenContext,
    decode,
    ensure_backend,
    fill_batch,
    loaded_model,
    logits_rows,
    open_context,
    token_batch,
)
from .machine import package_versions
from .speed import SpeedTest, run_speed_test
from .synthetic_models import stored_levels

SCHEMA = "mllm-cpu-quality/1"
DEFAULT_TEXT = "eval_text.md"
MIN_CONTEXT = 16
FIT_CONTEXT = 4096
SPEED_REPETITIONS = 3
_ROWS_PER_BLOCK = 16


class QualityProgress(Protocol):
    """Receives the measurement's steps (the CLI draws a bar over levels x chunks)."""

    def begin(self, total_steps: int) -> None:
        """The passes start; they take `total_steps` chunk steps."""

    def stage(self, description: str) -> None:
        """Say which file is being measured."""

    def advance(self) -> None:
        """One chunk (or speed test) is done."""


@dataclass(frozen=True)
class EvalText:
    """The text a ladder is measured on, and where it came from."""

    source: str
    text: str


def default_text() -> EvalText:
    """The evaluation text shipped with the package: math with LaTeX, Python, C++ and science prose."""
    resource = importlib.resources.files("mllm_cpu.bench") / "data" / DEFAULT_TEXT
    return EvalText(f"built-in {DEFAULT_TEXT}", _strip_final_newline(resource.read_text(encoding="utf-8")))


def read_text(path: Path | None) -> EvalText:
    """`--text FILE` (UTF-8), or the built-in text; an empty or unreadable file is an InputError."""
    if path is None:
        return default_text()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--text {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--text {path}: cannot read it as UTF-8 text ({error})") from None
    text = _strip_final_newline(text)
    if not text.strip():
        raise InputError(f"--text {path}: the file is empty")
    return EvalText(str(path), text)


def _strip_final_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


@dataclass
class QualityOptions:
    """What to measure; n_ctx 512 is llama-perplexity's default."""

    n_ctx: int = 512
    chunks: int | None = None
    threads: int | None = None
    speed: bool = False
    fit_ctx: int = FIT_CONTEXT

    def validate(self) -> None:
        """Raise InputError on an impossible value, before anything is loaded."""
        if self.n_ctx < MIN_CONTEXT:
            raise InputError(f"--ctx must be at least {MIN_CONTEXT}, got {self.n_ctx}")
        if self.chunks is not None and self.chunks < 1:
            raise InputError(f"--chunks must be at least 1, got {self.chunks}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")
        if self.fit_ctx < 1:
            raise InputError(f"--fit-ctx must be at least 1, got {self.fit_ctx}")

    @property
    def thread_count(self) -> int:
        """--threads, or this machine's physical cores."""
        return self.threads or physical_cores()


@dataclass
class _Sums:
    """Running sums over scored tokens, as llama-perplexity's kl_divergence_result."""

    count: int = 0
    nll: float = 0.0
    nll2: float = 0.0
    nll_base: float = 0.0
    nll_base2: float = 0.0
    nll_nll_base: float = 0.0
    kld: float = 0.0
    kld2: float = 0.0
    same_top: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)

    def add(self, nll: np.ndarray, nll_base: np.ndarray, kld: np.ndarray, same_top: np.ndarray) -> None:
        self.count += len(nll)
        self.nll += float(nll.sum())
        self.nll2 += float((nll * nll).sum())
        self.nll_base += float(nll_base.sum())
        self.nll_base2 += float((nll_base * nll_base).sum())
        self.nll_nll_base += float((nll * nll_base).sum())
        self.kld += float(kld.sum())
        self.kld2 += float((kld * kld).sum())
        self.same_top += int(same_top.sum())
        self.kld_values.append(kld.astype(np.float32))


def _mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """llama-perplexity's mean_and_uncertainty: the mean and its standard error (0 below 11 values)."""
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    variance = total2 / count - mean * mean
    return mean, math.sqrt(variance / (count - 1)) if variance > 0 and count > 10 else 0.0


def _covariance(sum_a: float, sum_b: float, sum_ab: float, count: int) -> float:
    """llama-perplexity's covariance of two means (0 below 10 values)."""
    if count < 10:
        return 0.0
    return (sum_ab / count - (sum_a / count) * (sum_b / count)) / (count - 1)


@dataclass
class Scores:
    """Quality of one file against the reference over the scored tokens."""

    tokens: int
    ppl: float
    ppl_uncertainty: float
    reference_ppl: float
    ln_ppl_ratio: float
    ln_ppl_ratio_uncertainty: float
    kl_mean: float
    kl_uncertainty: float
    kl_p99: float
    kl_max: float
    same_top: float
    same_top_uncertainty: float

    @property
    def ppl_change_percent(self) -> float:
        """100 (PPL / PPL_ref - 1), from the mean log ratio."""
        return 100 * math.expm1(self.ln_ppl_ratio)

    @classmethod
    def from_sums(cls, sums: _Sums) -> Scores:
        """The statistics llama-perplexity prints at the end of --kl-divergence."""
        count = sums.count
        log_ppl, log_ppl_unc = _mean_and_uncertainty(sums.nll, sums.nll2, count)
        log_base, log_base_unc = _mean_and_uncertainty(sums.nll_base, sums.nll_base2, count)
        covariance = _covariance(sums.nll, sums.nll_base, sums.nll_nll_base, count)
        ratio_variance = log_ppl_unc**2 + log_base_unc**2 - 2 * covariance
        kl_mean, kl_unc = _mean_and_uncertainty(sums.kld, sums.kld2, count)
        values = np.concatenate(sums.kld_values) if sums.kld_values else np.zeros(1, dtype=np.float32)
        same_top = sums.same_top / count if count else 0.0
        return cls(
            tokens=count,
            ppl=math.exp(log_ppl),
            ppl_uncertainty=math.exp(log_ppl) * log_ppl_unc,
            reference_ppl=math.exp(log_base),
            ln_ppl_ratio=log_ppl - log_base,
            ln_ppl_ratio_uncertainty=math.sqrt(max(ratio_variance, 0.0)),
            kl_mean=kl_mean,
            kl_uncertainty=kl_unc,
            kl_p99=float(np.percentile(values, 99)),
            kl_max=float(values.max()),
            same_top=same_top,
            same_top_uncertainty=math.sqrt(same_top * (1 - same_top) / (count - 1)) if count > 1 else 0.0,
        )


@dataclass
class LevelQuality:
    """One GGUF file of the ladder: what it is and how close it stays to the reference."""

    name: str
    quant: str
    path: str
    reference: bool
    file_bytes: int
    tensor_bytes: int
    n_params: int
    type_mix: dict[str, int]
    type_mix_text: str
    compute_bytes: int
    scores: Scores
    pp_ts: float | None = None
    tg_ts: float | None = None

    @property
    def bits_per_weight(self) -> float:
        """Tensor bits per parameter, as llama.cpp counts them."""
        return 8 * self.tensor_bytes / self.n_params if self.n_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, derived values included."""
        data = asdict(self)
        data["scores"]["ppl_change_percent"] = self.scores.ppl_change_percent
        data["bits_per_weight"] = self.bits_per_weight
        return data


@dataclass(frozen=True)
class Recommendation:
    """The best level (lowest mean KL) that fits a board's memory at a context length."""

    board: str
    description: str
    budget_bytes: int
    n_ctx: int
    level: str | None
    total_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class QualityRun:
    """A whole ladder: parameters, model shape, the levels measured so far."""

    created: str
    versions: dict[str, str]
    parameters: dict[str, Any]
    model: dict[str, int]
    levels: list[LevelQuality] = field(default_factory=list)
    interrupted: bool = False
    schema: str = SCHEMA

    def recommendations(self) -> list[Recommendation]:
        """One per board preset and this machine: the lowest-KL level whose weights, KV cache
        (F16, at the fit context) and compute buffers fit the budget."""
        n_ctx = int(self.parameters["fit_ctx"])
        result = []
        for board in (*BOARDS.values(), this_machine()):
            fitting = [(level, _fit_bytes(self, board, level, n_ctx)) for level in self.levels]
            fitting = [(level, total) for level, total in fitting if total is not None]
            best = min(fitting, key=lambda item: (item[0].scores.kl_mean, item[0].tensor_bytes), default=None)
            result.append(
                Recommendation(
                    board=board.key,
                    description=board.description,
                    budget_bytes=board.budget_bytes,
                    n_ctx=n_ctx,
                    level=best[0].quant if best else None,
                    total_bytes=best[1] if best else None,
                )
            )
        return result

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "schema": self.schema,
            "created": self.created,
            "versions": self.versions,
            "parameters": self.parameters,
            "model": self.model,
            "interrupted": self.interrupted,
            "levels": [level.to_dict() for level in self.levels],
            "recommendations": [r.to_dict() for r in self.recommendations()],
        }


def _fit_bytes(run: QualityRun, board: Board, level: LevelQuality, n_ctx: int) -> int | None:
    """Weights + KV cache + compute bytes when they fit the board's budget, else None."""
    model = run.model
    check = fit_check(
        board,
        model["n_layer"],
        model["n_head_kv"],
        model["head_dim"],
        model["n_ctx_train"],
        level.tensor_bytes,
        level.compute_bytes,
        min(n_ctx, model["n_ctx_train"]),
    )
    return check.total_bytes if check.fits else None


def _shape(model_file: ModelFile) -> dict[str, int]:
    return {
        "n_layer": model_file.n_layer,
        "n_embd": model_file.n_embd,
        "n_head": model_file.n_head,
        "n_head_kv": model_file.n_head_kv,
        "head_dim": model_file.head_dim,
        "n_vocab": model_file.n_vocab,
    }


def check_same_model(reference: ModelFile, others: list[ModelFile]) -> None:
    """Every file must have the reference's shapes and vocabulary size (tokens are compared later)."""
    expected = _shape(reference)
    for other in others:
        shape = _shape(other)
        different = [key for key in expected if shape[key] != expected[key]]
        if different:
            key = different[0]
            raise InputError(
                f"{other.path.name} is not the same model as the reference {reference.path.name}: "
                f"{key} {shape[key]} vs {expected[key]}"
            )


def tokenize_text(vocab: Any, text: str) -> list[int]:
    """llama-perplexity's tokenization: special tokens added (BOS), none parsed in the text."""
    import llama_cpp

    data = text.encode("utf-8")
    capacity = len(data) + 2
    buffer = (llama_cpp.llama_token * capacity)()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, capacity, True, False)
    if count < 0:
        raise RuntimeError(f"llama_tokenize needs {-count} tokens of room")
    return list(buffer[:count])


@contextmanager
def _vocab_only(path: Path) -> Iterator[Any]:
    """A model loaded without weights (vocabulary only), freed on exit."""
    import llama_cpp

    from mllm_cpu.core.llama_log import captured_llama_log, last_error

    ensure_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with captured_llama_log() as log:
        handle = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not handle:
        raise InputError(f"llama.cpp could not load the vocabulary of {path}: {last_error(log)}")
    try:
        yield llama_cpp.llama_model_get_vocab(handle)
    finally:
        llama_cpp.llama_model_free(handle)


def text_tokens(reference: Path, levels: list[Path], text: EvalText) -> list[int]:
    """The reference's tokens of the text; every level must tokenize it the same way."""
    with _vocab_only(reference) as vocab:
        tokens = tokenize_text(vocab, text.text)
    for path in levels:
        with _vocab_only(path) as vocab:
            if tokenize_text(vocab, text.text) != tokens:
                raise InputError(f"{path.name} tokenizes the text differently from the reference: another vocabulary")
    return tokens


def chunk_count(n_tokens: int, options: QualityOptions, source: str) -> int:
    """Whole chunks of n_ctx tokens in the text (at most --chunks); fewer than one is an InputError."""
    available = n_tokens // options.n_ctx
    if available < 1:
        raise InputError(
            f"the text ({source}) has {n_tokens} tokens, fewer than one chunk of --ctx {options.n_ctx}; "
            "give a longer --text or a smaller --ctx"
        )
    return min(available, options.chunks) if options.chunks else available


class _ChunkDecoder:
    """Decodes chunk after chunk of the text on one context, logits from position n_ctx/2 on."""

    def __init__(self, model: LoadedModel, context: OpenContext, batch: Any, tokens: list[int], n_ctx: int) -> None:
        self.model, self.context, self.batch, self.tokens, self.n_ctx = model, context, batch, tokens, n_ctx
        self.first = n_ctx // 2

    @property
    def scored(self) -> int:
        """Tokens scored per chunk."""
        return self.n_ctx - 1 - self.first

    def targets(self, chunk: int) -> np.ndarray:
        """The tokens the scored positions predict."""
        start = chunk * self.n_ctx + self.first + 1
        return np.asarray(self.tokens[start : start + self.scored], dtype=np.int64)

    def logits(self, chunk: int) -> np.ndarray:
        """Decode one chunk from an empty cache (BOS first); float32 logits of the scored positions."""
        import llama_cpp

        chunk_tokens = self.tokens[chunk * self.n_ctx : (chunk + 1) * self.n_ctx]
        if self.model.add_bos:
            chunk_tokens[0] = self.model.bos
        llama_cpp.llama_memory_clear(self.context.memory, True)
        fill_batch(self.batch, chunk_tokens, 0, first_output=self.first)
        decode(self.context, self.batch)
        return logits_rows(self.context, self.first, self.scored, self.model.n_vocab)


@contextmanager
def _decoder(model: LoadedModel, tokens: list[int], options: QualityOptions) -> Iterator[_ChunkDecoder]:
    settings = ContextSettings(options.n_ctx, options.thread_count, options.n_ctx, min(options.n_ctx, 512))
    with open_context(model, settings) as context, token_batch(options.n_ctx) as batch:
        yield _ChunkDecoder(model, context, batch, tokens, options.n_ctx)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64."""
    values = logits.astype(np.float64)
    values -= values.max(axis=1, keepdims=True)
    values -= np.log(np.exp(values).sum(axis=1, keepdims=True))
    return values


def _compare(logits: np.ndarray, log_ref: np.ndarray, targets: np.ndarray, sums: _Sums) -> None:
    """Add a block of scored rows to the sums: a level's logits against the reference's log-probabilities."""
    rows = np.arange(len(targets))
    log_p = _log_softmax(logits)
    reference = log_ref.astype(np.float64)
    nll = -log_p[rows, targets]
    nll_base = -reference[rows, targets]
    kld = (np.exp(reference) * (reference - log_p)).sum(axis=1)
    same_top = logits.argmax(axis=1) == log_ref.argmax(axis=1)
    sums.add(nll, nll_base, kld, same_top)


def _blocks(rows: int) -> Iterator[slice]:
    """Row blocks of a chunk: float64 work arrays stay at a few block sizes."""
    for start in range(0, rows, _ROWS_PER_BLOCK):
        yield slice(start, min(start + _ROWS_PER_BLOCK, rows))


def _reference_pass(decoder: _ChunkDecoder, n_chunks: int, store: IO[bytes], progress: QualityProgress) -> _Sums:
    """Decode every chunk with the reference, append its scored log-probabilities to `store`, and
    score it against what it wrote (KL 0 up to float32 rounding, same top 100%)."""
    sums = _Sums()
    for chunk in range(n_chunks):
        logits, targets = decoder.logits(chunk), decoder.targets(chunk)
        for block in _blocks(decoder.scored):
            log_ref = _log_softmax(logits[block]).astype(np.float32)
            store.write(log_ref.tobytes())
            _compare(logits[block], log_ref, targets[block], sums)
        progress.advance()
    store.flush()
    return sums


def _level_pass(decoder: _ChunkDecoder, n_chunks: int, store: IO[bytes], progress: QualityProgress) -> _Sums:
    """Decode every chunk with a level and compare it, block by block, with the stored reference rows."""
    sums = _Sums()
    n_vocab = decoder.model.n_vocab
    store.seek(0)
    for chunk in range(n_chunks):
        logits, targets = decoder.logits(chunk), decoder.targets(chunk)
        for block in _blocks(decoder.scored):
            rows = block.stop - block.start
            log_ref = np.frombuffer(store.read(rows * n_vocab * 4), dtype=np.float32).reshape(rows, n_vocab)
            _compare(logits[block], log_ref, targets[block], sums)
        progress.advance()
    return sums


def _measure(
    path: Path,
    tokens: list[int],
    n_chunks: int,
    options: QualityOptions,
    store: IO[bytes],
    is_reference: bool,
    progress: QualityProgress,
) -> LevelQuality:
    model_file = validate_model_file(path)
    summary = summarize_header(model_file.header)
    progress.stage(f"{path.stem}{' (reference)' if is_reference else ''}")
    with loaded_model(path) as model:
        with _decoder(model, tokens, options) as decoder:
            run_pass = _reference_pass if is_reference else _level_pass
            sums = run_pass(decoder, n_chunks, store, progress)
            compute = int(decoder.context.buffers.total_mib("compute") * MIB)
        pp_ts = tg_ts = None
        if options.speed:
            progress.stage(f"{path.stem}: pp512, tg128")
            pp_ts = run_speed_test(model, SpeedTest(512, 0, options.thread_count), SPEED_REPETITIONS).mean_ts
            progress.advance()
            tg_ts = run_speed_test(model, SpeedTest(0, 128, options.thread_count), SPEED_REPETITIONS).mean_ts
            progress.advance()
        return LevelQuality(
            name=path.stem,
            quant=summary.file_type,
            path=str(path),
            reference=is_reference,
            file_bytes=summary.file_bytes,
            tensor_bytes=model.tensor_bytes,
            n_params=model.n_params,
            type_mix=summary.type_mix,
            type_mix_text=summary.type_mix_text(),
            compute_bytes=compute,
            scores=Scores.from_sums(sums),
            pp_ts=pp_ts,
            tg_ts=tg_ts,
        )


def prepare(
    reference: Path, levels: list[Path], text: EvalText, options: QualityOptions
) -> tuple[ModelFile, list[int], int]:
    """Check everything before measuring: options, files, same model, tokens; the reference, tokens, chunks."""
    options.validate()
    reference_file = validate_model_file(reference)
    others = [validate_model_file(path) for path in levels]
    check_same_model(reference_file, others)
    for model_file in (reference_file, *others):
        if options.n_ctx > model_file.n_ctx_train:
            raise InputError(
                f"--ctx {options.n_ctx} exceeds the training context of {model_file.path.name} "
                f"({model_file.n_ctx_train})"
            )
    tokens = text_tokens(reference, levels, text)
    return reference_file, tokens, chunk_count(len(tokens), options, text.source)


def run_quality(
    reference: Path,
    levels: list[Path],
    text: EvalText,
    options: QualityOptions,
    progress: QualityProgress,
) -> QualityRun:
    """Measure the reference, then each level against it. Ctrl-C during a level keeps the finished
    ones (the run is marked interrupted); during the reference pass it propagates."""
    levels = [path for path in dict.fromkeys(levels) if path != reference]
    reference_file, tokens, n_chunks = prepare(reference, levels, text, options)
    run = QualityRun(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=package_versions(),
        parameters={
            **asdict(options),
            "threads": options.thread_count,
            "text": text.source,
            "text_tokens": len(tokens),
            "chunks": n_chunks,
            "scored_per_chunk": options.n_ctx - 1 - options.n_ctx // 2,
            "reference": str(reference),
        },
        model={**_shape(reference_file), "n_ctx_train": reference_file.n_ctx_train},
    )
    steps_per_file = n_chunks + (2 if options.speed else 0)
    progress.begin(steps_per_file * (1 + len(levels)))
    with tempfile.TemporaryFile(prefix="mllm-cpu-quality-") as store:
        run.levels.append(_measure(reference, tokens, n_chunks, options, store, True, progress))
        for path in levels:
            try:
                level = _measure(path, tokens, n_chunks, options, store, False, progress)
            except KeyboardInterrupt:
                run.interrupted = True
                break
            run.levels.append(level)
    return run


LADDER = "f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k"
_LOSSLESS = ("F32", "BF16", "F16")


def resolve_sources(
    sources: list[str],
    quant: str | None,
    reference: str | None,
    progress: ConvertProgress | None = None,
    display: ConversionDisplay | None = None,
) -> tuple[Path, list[Path]]:
    """The reference file and the ladder's files (levels converted into the store shown by `progress`,
    a checkpoint folder given as --reference by `display`).

    SOURCE is one checkpoint folder (its levels converted into the store, files already
    there reused; reference: the lossless level of its weights, or --reference f16/bf16/f32 or
    a file) or GGUF files / store names of one model (reference: --reference FILE or level name,
    else the lossless file among them).
    """
    if not sources:
        raise InputError("give a checkpoint folder, or GGUF files of one model")
    folders = [Path(s).expanduser() for s in sources if Path(s).expanduser().is_dir()]
    if folders:
        if len(sources) > 1:
            raise InputError("give one checkpoint folder, or GGUF files (not both, not several folders)")
        return _checkpoint_ladder(folders[0], quant, reference, progress, display)
    paths = list(dict.fromkeys(resolve_model(spec, display) for spec in sources))
    if quant is not None:
        raise InputError("--quant applies to a checkpoint folder (GGUF files are measured as given)")
    if reference is not None and reference.lower() not in QUANT_LEVELS:
        return resolve_model(reference, display), paths
    types = {path: summarize_header(validate_model_file(path).header).file_type for path in paths}
    wanted = [reference.upper()] if reference is not None else list(_LOSSLESS)
    for label in wanted:
        matching = [path for path in paths if types[path] == label]
        if matching:
            return matching[0], paths
    raise InputError(f"no {' or '.join(wanted)} file among the given files to compare against; give --reference FILE")


def _checkpoint_ladder(
    folder: Path,
    quant: str | None,
    reference: str | None,
    progress: ConvertProgress | None,
    display: ConversionDisplay | None,
) -> tuple[Path, list[Path]]:
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a checkpoint folder (no config.json)")
    levels = parse_quant_list(quant or LADDER)
    if reference is not None and reference.lower() not in QUANT_LEVELS:
        return resolve_model(reference, display), stored_levels(folder, levels, progress)
    storage = load_checkpoint(folder).storage_dtype
    reference_level = QUANT_LEVELS[(reference or storage).lower()]
    if reference_level.label not in _LOSSLESS:
        raise InputError(f"--reference {reference}: choose a lossless level (f32, bf16, f16) or a GGUF file")
    paths = stored_levels(folder, list(dict.fromkeys([reference_level, *levels])), progress)
    return paths[0], paths[1:]
