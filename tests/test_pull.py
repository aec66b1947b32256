"""`mllm-cpu pull` against a local stand-in for the hub (real files, real HTTP, nothing from the internet)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from helpers.cli_runner import MLLM_CPU, error_lines, files_in, run_cli
from helpers.hub_stand_in import HubStandIn, StandInRepo, commit_of
from helpers.llama_cpp_sources import convert_with_llama_cpp
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.convert.synthetic import write_synthetic_checkpoint
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.origin import Origin
from mllm_cpu.hub import parse_repo, pull
from mllm_cpu.listing import store_listing
from mllm_cpu.model_file import validate_model_file

PUBLIC = "facebook/MobileLLM-R1-tiny"
GATED = "facebook/MobileLLM-R1-tiny-gated"
FOREIGN = "someone/Qwen2-tiny"
GGUFS = "someone/MobileLLM-R1-tiny-GGUF"
BROKEN = "someone/MobileLLM-R1-tiny-llama4-GGUF"
LARGE = "facebook/MobileLLM-R1-tiny-synthetic"
GRANTED = "hf_granted_token"
WEIGHTS = "model.safetensors"
CHUNK = 10 * 1024 * 1024
"""huggingface_hub writes a download in chunks of this size (constants.DOWNLOAD_CHUNK_SIZE)."""


@pytest.fixture(scope="session")
def large_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` synthetic preset: real Llama-3 vocabulary, 33 MB of weights (several download chunks)."""
    return write_synthetic_checkpoint("tiny", tmp_path_factory.mktemp("large"))


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables are not folded to 80 columns, so cells can be found whole."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture(scope="session")
def upstream_gguf(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The broken llama4 zero-expert Q8_0 file llama.cpp's own converter makes of the tiny checkpoint."""
    return convert_with_llama_cpp(tiny_checkpoint, tmp_path_factory.mktemp("upstream") / "upstream.gguf", "q8_0")


@pytest.fixture()
def hub(
    tiny_checkpoint: Path,
    large_checkpoint: Path,
    tiny_ggufs: dict[str, Path],
    upstream_gguf: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[HubStandIn]:
    """The stand-in with six repositories, reached by the CLI through HF_ENDPOINT."""
    checkpoint = {p.name: p for p in tiny_checkpoint.iterdir() if p.is_file()}
    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: other\nlicense_name: fair-noncommercial-research\n---\n# tiny\n")
    unused = tmp_path / "consolidated.pth"
    unused.write_bytes(b"\0" * 4096)
    foreign_config = tmp_path / "config.json"
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    foreign_config.write_text(json.dumps({**config, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    repos = {
        PUBLIC: StandInRepo({**checkpoint, "README.md": readme, "original/consolidated.pth": unused}),
        GATED: StandInRepo(dict(checkpoint), gated=True, granted_tokens=frozenset({GRANTED})),
        FOREIGN: StandInRepo({"config.json": foreign_config, WEIGHTS: checkpoint[WEIGHTS]}),
        BROKEN: StandInRepo({"MobileLLM-R1-tiny.Q8_0.gguf": upstream_gguf}),
        LARGE: StandInRepo({p.name: p for p in large_checkpoint.iterdir() if p.is_file()}),
        GGUFS: StandInRepo(
            {
                "MobileLLM-R1-tiny.Q8_0.gguf": tiny_ggufs["q8_0"],
                "MobileLLM-R1-tiny.Q4_K_M.gguf": tiny_ggufs["q4_k_m"],
                "README.md": readme,
            }
        ),
    }
    stand_in = HubStandIn(repos)
    monkeypatch.setenv("HF_ENDPOINT", stand_in.start())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token or cache of the user's
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        yield stand_in
    finally:
        stand_in.stop()


def _pull_error(hub: HubStandIn, repo: str, token: str | None = None) -> str:
    """The one-line message of a pull that fails (run in this process)."""
    with pytest.raises(InputError) as raised:
        pull(parse_repo(repo), parse_quant_list("q8_0"), token=token, endpoint=hub.url)
    message = str(raised.value)
    assert "\n" not in message
    return message


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(path).tensors}


def _assert_one_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_pull_converts_a_safetensors_repository(
    hub: HubStandIn, isolated_store: Path, tiny_ggufs: dict[str, Path]
) -> None:
    result = run_cli("pull", PUBLIC, "--quant", "q8_0", "--json")
    assert result.returncode == 0, result.stderr
    pulled = json.loads(result.stdout)
    assert pulled["commit"] == commit_of(PUBLIC) and pulled["kind"] == "safetensors"
    [model] = pulled["models"]
    stored = Path(model["file"])
    assert stored == isolated_store / "models" / "MobileLLM-R1-tiny-Q8_0.gguf"
    assert model["status"] == "converted" and model["quant"] == "Q8_0"
    # the same tensors as a local conversion of the same checkpoint
    assert _tensor_bytes(stored) == _tensor_bytes(tiny_ggufs["q8_0"])
    # only what conversion reads was fetched, and the checkpoint is gone again
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert WEIGHTS in fetched and "config.json" in fetched and "README.md" in fetched
    assert not hub.seen("original/consolidated.pth")
    assert files_in(isolated_store) == ["models/MobileLLM-R1-tiny-Q8_0.gguf"]
    [listed] = store_listing()
    assert listed.origin == Origin("pulled", f"{PUBLIC}@{commit_of(PUBLIC)[:12]}")
    shown = run_cli("models")
    assert f"pulled {PUBLIC}@{commit_of(PUBLIC)[:12]}" in shown.stdout

    # a second pull finds the file and downloads no weights for it; --keep-checkpoint keeps the folder
    before = len(hub.seen(WEIGHTS, "GET"))
    again = pull(parse_repo(PUBLIC), parse_quant_list("q8_0,q4_0"), keep_checkpoint=True, endpoint=hub.url)
    assert {m.quant: m.status for m in again.models} == {"Q8_0": "already in the store", "Q4_0": "converted"}
    assert len(hub.seen(WEIGHTS, "GET")) == before + 1
    assert again.checkpoint is not None
    assert {"config.json", WEIGHTS, "tokenizer.json"} <= {p.name for p in again.checkpoint.iterdir()}


def test_pull_takes_the_requested_file_of_a_gguf_repository(
    hub: HubStandIn, isolated_store: Path, tiny_ggufs: dict[str, Path]
) -> None:
    result = pull(parse_repo(GGUFS), parse_quant_list("q8_0"), endpoint=hub.url)
    [model] = result.models
    assert model.status == "downloaded" and model.file.name == "MobileLLM-R1-tiny.Q8_0.gguf"
    assert model.file.read_bytes() == tiny_ggufs["q8_0"].read_bytes()
    assert not hub.seen("MobileLLM-R1-tiny.Q4_K_M.gguf")
    assert sorted(files_in(isolated_store)) == [
        "models/MobileLLM-R1-tiny.Q8_0.gguf",
        "models/MobileLLM-R1-tiny.Q8_0.gguf.origin.json",
    ]
    [listed] = store_listing()
    assert listed.origin == Origin("pulled", f"{GGUFS}@{commit_of(GGUFS)[:12]}")

    with pytest.raises(InputError, match="has no Q6_K GGUF file; it offers: Q4_K_M, Q8_0"):
        pull(parse_repo(GGUFS), parse_quant_list("q6_k"), endpoint=hub.url)


def test_a_broken_llama4_gguf_is_repaired_on_the_way_in(hub: HubStandIn, isolated_store: Path) -> None:
    [model] = pull(parse_repo(BROKEN), parse_quant_list("q8_0"), endpoint=hub.url).models
    assert model.status == "repaired" and model.file.name == "MobileLLM-R1-tiny.Q8_0.gguf"
    assert validate_model_file(model.file).header.architecture == "qwen3"
    assert files_in(isolated_store) == ["models/MobileLLM-R1-tiny.Q8_0.gguf"]  # the origin is in the file itself
    [listed] = store_listing()
    assert listed.origin == Origin("pulled", f"{BROKEN}@{commit_of(BROKEN)[:12]}", repaired=True)


def test_gated_repository_needs_a_token_with_access(hub: HubStandIn, isolated_store: Path) -> None:
    _assert_one_error(run_cli("pull", GATED), "is gated", "accept the license", "hf auth login", "--token")
    assert hub.seen("config.json")[-1].authorization is None
    refused = _pull_error(hub, GATED, token="hf_not_granted")
    assert "no access yet" in refused and "accept the license" in refused
    assert files_in(isolated_store) == []

    granted = pull(parse_repo(GATED), parse_quant_list("q8_0"), token=GRANTED, endpoint=hub.url)
    assert all(r.authorization == f"Bearer {GRANTED}" for r in hub.seen(WEIGHTS))
    assert [m.status for m in granted.models] == ["converted"]


def test_missing_repository_revision_and_bad_names(hub: HubStandIn, isolated_store: Path) -> None:
    assert "no such model repository" in _pull_error(hub, "facebook/no-such-model")
    assert "has no revision no-such-branch" in _pull_error(hub, f"{PUBLIC}@no-such-branch")
    with pytest.raises(InputError, match="OWNER/NAME"):
        parse_repo("MobileLLM-R1-950M")
    assert files_in(isolated_store) == []


def test_unsupported_architecture_is_refused_before_the_weights(hub: HubStandIn, isolated_store: Path) -> None:
    assert "unsupported architecture Qwen2ForCausalLM" in _pull_error(hub, FOREIGN)
    assert hub.seen("config.json", "GET") and not hub.seen(WEIGHTS)
    assert files_in(isolated_store) == []


def test_no_network_is_one_line(isolated_store: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError, match="cannot reach the hub .* check the network"):
        pull(parse_repo(PUBLIC), parse_quant_list("q8_0"), endpoint=f"http://127.0.0.1:{port}")
    assert files_in(isolated_store) == []


def test_a_dropped_connection_continues_with_a_range_request(hub: HubStandIn, isolated_store: Path) -> None:
    hub.cut_after[WEIGHTS] = CHUNK + 1_000_000
    result = pull(parse_repo(LARGE), parse_quant_list("q8_0"), endpoint=hub.url)
    assert [m.status for m in result.models] == ["converted"]
    assert [r.range for r in hub.seen(WEIGHTS, "GET")] == [None, f"bytes={CHUNK}-"]
    assert files_in(isolated_store) == ["models/MobileLLM-R1-tiny-synthetic-Q8_0.gguf"]


def test_an_interrupted_pull_resumes_in_the_next_run(hub: HubStandIn, isolated_store: Path) -> None:
    hub.stall_after[WEIGHTS] = CHUNK + 1_000_000
    process = subprocess.Popen(
        [MLLM_CPU, "pull", LARGE, "--quant", "q8_0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    partial = isolated_store / "downloads" / LARGE.replace("/", "--") / commit_of(LARGE) / f".{WEIGHTS}.incomplete"
    deadline = time.monotonic() + 60
    while not (partial.is_file() and partial.stat().st_size >= CHUNK) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert partial.stat().st_size == CHUNK
    assert files_in(isolated_store / "models") == []
    hub.release.set()

    result = run_cli("pull", LARGE, "--quant", "q8_0")
    assert result.returncode == 0, result.stderr
    assert [r.range for r in hub.seen(WEIGHTS, "GET")] == [None, f"bytes={CHUNK}-"]
    assert files_in(isolated_store) == ["models/MobileLLM-R1-tiny-synthetic-Q8_0.gguf"]
