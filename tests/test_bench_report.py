"""A real run on a tiny model: every field is filled, and JSON/CSV read back to the same data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mllm_cpu.bench.boards import kv_cache_bytes
from mllm_cpu.bench.report import (
    csv_rows,
    markdown,
    parse_csv,
    render,
    speed_rows,
    speed_table,
    to_csv,
    to_json,
    write_report,
)
from mllm_cpu.bench.results import BenchRun
from mllm_cpu.bench.runner import BenchOptions, run_benchmark
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.pipeline import SilentProgress
from mllm_cpu.core.errors import InputError


class RecordedProgress(SilentProgress):
    def __init__(self) -> None:
        self.total = 0
        self.advanced = 0
        self.stages: list[str] = []

    def begin(self, total_steps: int) -> None:
        self.total = total_steps

    def stage(self, description: str) -> None:
        self.stages.append(description)

    def advance(self) -> None:
        self.advanced += 1

    def note(self, text: str) -> None:
        pass


@pytest.fixture(scope="module")
def progress() -> RecordedProgress:
    return RecordedProgress()


@pytest.fixture(scope="module")
def run(synthetic_tiny_gguf: Path, progress: RecordedProgress) -> BenchRun:
    options = BenchOptions(prompts=[16], gens=[4], threads=[1], repetitions=2, n_ctx=256)
    return run_benchmark([synthetic_tiny_gguf], options, progress)


def test_progress_counts_every_step(run: BenchRun, progress: RecordedProgress) -> None:
    assert progress.total == progress.advanced > 0
    assert progress.stages[0] == "memory bandwidth"


def test_results_carry_every_field(run: BenchRun, synthetic_tiny_gguf: Path) -> None:
    assert [r.test for r in run.results] == ["pp16", "tg4"]
    pp, tg = run.results
    assert pp.counted_tokens == [16, 16] and tg.counted_tokens == [4, 4]
    for result in run.results:
        assert len(result.samples_ns) == 2 and result.avg_ts > 0 and result.stdev_ts >= 0
        assert (result.threads, result.n_batch, result.n_ubatch) == (1, 2048, 512)
    assert pp.roofline_ts is None and pp.roofline_percent is None
    assert tg.roofline_ts and tg.roofline_percent and tg.roofline_percent > 0
    (model,) = run.models
    header = read_gguf_header(synthetic_tiny_gguf)
    assert model.path == str(synthetic_tiny_gguf) and model.file_type == "Q8_0"
    assert model.bytes_per_token == model.tensor_bytes == sum(t.n_bytes for t in header.tensors)
    assert model.n_params == sum(t.n_elements for t in header.tensors)
    assert 8 < model.bits_per_weight < 9
    assert model.load_seconds > 0 and model.ttft_prompt_tokens > 20 and len(model.ttft_samples_ns) == 2
    assert model.memory and model.memory.peak_rss_bytes > model.memory.baseline_rss_bytes
    assert model.fit and model.fit.kv_bytes == kv_cache_bytes(2, 1, 64, 256) and model.fit.board == "laptop"
    assert model.fit.compute_bytes > 0 and model.fit.max_context > 0
    assert run.bandwidth and len(run.bandwidth.samples) == 5 and run.bandwidth.best > 0
    assert run.machine["physical_cores"] >= 1 and run.machine["llama_system_info"]
    assert set(run.versions) >= {"python", "llama-cpp-python", "gguf", "numpy", "mllm-cpu"}
    assert run.parameters["repetitions"] == 2 and run.parameters["threads"] == [1]


def test_json_round_trip(run: BenchRun) -> None:
    text = to_json(run)
    assert BenchRun.from_dict(json.loads(text)) == run
    assert json.loads(render(run, "json")) == run.to_dict()
    assert json.loads(text)["results"][1]["samples_ns"] == run.results[1].samples_ns


def test_a_run_saved_before_depth_and_flash_attention_reads_as_d0_auto(run: BenchRun) -> None:
    saved = run.to_dict()
    for result in saved["results"]:
        del result["n_depth"], result["flash_attn"]
    assert BenchRun.from_dict(json.loads(json.dumps(saved))) == run
    assert {(r.n_depth, r.flash_attn) for r in run.results} == {(0, "auto")}


def test_csv_round_trip(run: BenchRun) -> None:
    rows = parse_csv(to_csv(run))
    assert rows == csv_rows(run)
    assert rows[1]["samples_ns"] == run.results[1].samples_ns and rows[1]["roofline_ts"] == run.results[1].roofline_ts
    with pytest.raises(InputError):
        parse_csv("a,b\n1,2\n")


def test_tables_have_llama_benchs_columns(run: BenchRun) -> None:
    columns, rows = speed_rows(run)
    assert [c for c in columns if c in ("model", "size", "params", "quant", "threads", "test", "t/s")] == [
        "model",
        "size",
        "params",
        "quant",
        "threads",
        "test",
        "t/s",
    ]
    assert {"bpw", "load s", "peak RSS", "TTFT ms", "roofline t/s", "% roofline"} <= set(columns)
    assert [row[columns.index("test")] for row in rows] == ["pp16", "tg4"]
    text = markdown(run)
    header, rule, *lines = text.splitlines()
    assert header.startswith("| model") and header.count("|") == rule.count("|") == len(columns) + 1
    assert "---:" in rule and any("pp16" in line for line in lines) and "max ctx" in text


def test_several_models_read_side_by_side(run: BenchRun, synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    assert speed_table(run)[1:] == speed_rows(run)
    other = tmp_path / "other-tiny-Q8_0.gguf"
    shutil.copyfile(synthetic_tiny_gguf, other)
    options = BenchOptions(prompts=[16], gens=[4], threads=[1], repetitions=1, n_ctx=256, bandwidth=False)
    both = run_benchmark([synthetic_tiny_gguf, other], options)
    title, columns, rows = speed_table(both)
    assert "2 models side by side" in title
    assert columns[:4] == ["model", "quant", "size", "params"] and columns[4:6] == ["pp16 t/s", "tg4 t/s"]
    assert [row[:2] for row in rows] == [[m.name, "Q8_0"] for m in both.models] and rows[1][0] == "other-tiny"
    for record in csv_rows(both):
        (row,) = [row for row in rows if row[0] == record["model"]]
        cell = row[columns.index(f"{record['test']} t/s")]
        assert cell.startswith(f"{record['avg_ts']:.2f} ± {record['stdev_ts']:.2f}")
    header, rule, *lines = markdown(both).split("\n\n")[0].splitlines()
    assert [cell.strip() for cell in header.strip("|").split("|")] == columns
    assert len(lines) == 2 and rule.count("---:") >= 4 and all(line.count("|") == len(columns) + 1 for line in lines)


def test_reports_are_written_atomically(run: BenchRun, tmp_path: Path) -> None:
    target = tmp_path / "run.csv"
    write_report(render(run, "csv"), target)
    assert parse_csv(target.read_text()) == csv_rows(run)
    assert [p.name for p in tmp_path.iterdir()] == ["run.csv"]
    with pytest.raises(InputError, match="does not exist"):
        write_report("x", tmp_path / "missing" / "run.json")
