"""The results of a benchmark run, with everything needed to compare two runs later."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from .bandwidth import Bandwidth
from .boards import FitCheck
from .llama_session import DEFAULT_FLASH_ATTN
from .memory import MemoryReport

SCHEMA = "mllm-cpu-bench/1"


@dataclass
class ModelResult:
    """One GGUF file: what it holds and the per-model measurements."""

    name: str
    path: str
    file_type: str
    type_mix: dict[str, int]
    file_bytes: int
    tensor_bytes: int
    n_params: int
    bytes_per_token: int
    n_layer: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    load_seconds: float
    ttft_prompt_tokens: int
    ttft_samples_ns: list[int]
    memory: MemoryReport | None = None
    fit: FitCheck | None = None

    @property
    def bits_per_weight(self) -> float:
        """Tensor bits per parameter, as llama.cpp counts them."""
        return 8 * self.tensor_bytes / self.n_params if self.n_params else 0.0

    @property
    def ttft_mean_ms(self) -> float:
        """Mean time to first token, milliseconds."""
        return statistics.fmean(self.ttft_samples_ns) / 1e6 if self.ttft_samples_ns else 0.0

    @property
    def ttft_stdev_ms(self) -> float:
        """Sample standard deviation of the time to first token, milliseconds."""
        return statistics.stdev(self.ttft_samples_ns) / 1e6 if len(self.ttft_samples_ns) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, derived values included."""
        data = asdict(self)
        data["memory"] = self.memory.to_dict() if self.memory else None
        data["fit"] = self.fit.to_dict() if self.fit else None
        data.update(
            bits_per_weight=self.bits_per_weight, ttft_mean_ms=self.ttft_mean_ms, ttft_stdev_ms=self.ttft_stdev_ms
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelResult:
        """The inverse of `to_dict`."""
        values = {name: data[name] for name in cls.__dataclass_fields__}
        values["memory"] = MemoryReport.from_dict(data["memory"]) if data.get("memory") else None
        values["fit"] = FitCheck.from_dict(data["fit"]) if data.get("fit") else None
        return cls(**values)


@dataclass
class SpeedResult:
    """One pp or tg test of one model: every repetition's time, and the roofline for tg."""

    model: str
    test: str
    n_prompt: int
    n_gen: int
    threads: int
    n_batch: int
    n_ubatch: int
    samples_ns: list[int]
    counted_tokens: list[int]
    avg_ts: float
    stdev_ts: float
    roofline_ts: float | None = None
    n_depth: int = 0
    flash_attn: str = DEFAULT_FLASH_ATTN

    @property
    def roofline_percent(self) -> float | None:
        """avg t/s as a percentage of the roofline (tg only)."""
        return 100 * self.avg_ts / self.roofline_ts if self.roofline_ts else None

    @property
    def noisy(self) -> bool:
        """The repetitions spread wider than their mean: the average says little."""
        return self.stdev_ts > self.avg_ts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, derived values included."""
        return {**asdict(self), "roofline_percent": self.roofline_percent, "noisy": self.noisy}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedResult:
        """The inverse of `to_dict` (files written before depth and flash attention were options read as d0, auto)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


@dataclass
class BenchRun:
    """A whole run: machine, versions, bandwidth, parameters, models and test results."""

    created: str
    machine: dict[str, Any]
    versions: dict[str, str]
    bandwidth: Bandwidth | None
    parameters: dict[str, Any]
    models: list[ModelResult] = field(default_factory=list)
    results: list[SpeedResult] = field(default_factory=list)
    schema: str = SCHEMA

    def model(self, path: str) -> ModelResult:
        """The model a test result refers to."""
        return next(m for m in self.models if m.path == path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "schema": self.schema,
            "created": self.created,
            "machine": self.machine,
            "versions": self.versions,
            "bandwidth": self.bandwidth.to_dict() if self.bandwidth else None,
            "parameters": self.parameters,
            "models": [m.to_dict() for m in self.models],
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRun:
        """The inverse of `to_dict`."""
        return cls(
            created=data["created"],
            machine=data["machine"],
            versions=data["versions"],
            bandwidth=Bandwidth.from_dict(data["bandwidth"]) if data.get("bandwidth") else None,
            parameters=data["parameters"],
            models=[ModelResult.from_dict(m) for m in data["models"]],
            results=[SpeedResult.from_dict(r) for r in data["results"]],
            schema=data.get("schema", SCHEMA),
        )
