"""`mllm-cpu pull`: a model from the Hugging Face hub into the store.

A safetensors repository is checked from its config.json before any weights are fetched,
downloaded (only what conversion reads), converted at the requested levels and removed
again; a GGUF repository gives the file of each requested level, repaired when it has the
broken llama4 layout. huggingface_hub does the talking: authentication (`hf auth login`,
HF_TOKEN, --token), the hub's typed errors, and the HTTP transfer with Range resume.
Downloads go to `$MLLM_CPU_HOME/downloads/OWNER--NAME/COMMIT/` under hidden partial names
that persist, so an interrupted pull continues where it stopped with a Range request
(hf_hub_download's own partial file is private to one process and deleted when it fails,
so it cannot continue across runs).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import gguf
import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, get_token, hf_hub_url
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import WeakFileLock, build_hf_headers, validate_repo_id

from mllm_cpu.convert.model_spec import read_config, spec_from_config
from mllm_cpu.convert.pipeline import ConvertProgress, convert_checkpoint
from mllm_cpu.convert.quant_types import QUANT_LEVELS, QuantLevel
from mllm_cpu.convert.repair import needs_repair, repair_gguf
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.origin import Origin
from mllm_cpu.model_file import validate_model_file
from mllm_cpu.store import models_dir, remove_model, store_home, write_origin_record

WEIGHT_INDEX = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"
CHECKPOINT_EXTRAS = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "README.md",
)
"""Besides config and weights: what conversion reads (tokenizer, template, generation
config) and the model card, which carries the license."""
_LICENSE_FILE = re.compile(r"^(LICENSE|USE_POLICY)[^/]*$", re.IGNORECASE)
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


class DownloadProgress(Protocol):
    """Receives download progress (the CLI draws a bar per file)."""

    def file_started(self, name: str, total: int | None, done: int) -> None:
        """A file is started; `done` bytes of it were already on disk."""

    def advanced(self, count: int) -> None:
        """`count` more bytes arrived (negative when the server restarted the file)."""

    def file_finished(self, name: str) -> None:
        """The file is complete."""


class SilentDownloads:
    """A DownloadProgress that shows nothing."""

    def file_started(self, name: str, total: int | None, done: int) -> None:
        pass

    def advanced(self, count: int) -> None:
        pass

    def file_finished(self, name: str) -> None:
        pass


@dataclass(frozen=True)
class RepoRef:
    """OWNER/NAME[@REVISION] as the user wrote it."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


@dataclass
class PulledModel:
    """One store file a pull produced (or found already there)."""

    file: Path
    quant: str
    bytes: int
    status: str
    """"converted", "downloaded", "repaired" or "already in the store"."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"file": str(self.file), "quant": self.quant, "bytes": self.bytes, "status": self.status}

    @classmethod
    def in_store(cls, file: Path, level: QuantLevel, status: str) -> PulledModel:
        """The row of a file in the store, with its size on disk."""
        return cls(file, level.label, file.stat().st_size, status)


@dataclass
class PullResult:
    """What `pull` did: the repository, its commit, its kind and the store files."""

    repo: str
    commit: str
    kind: str
    """"safetensors" (converted here) or "gguf"."""
    models: list[PulledModel] = field(default_factory=list)
    checkpoint: Path | None = None
    """The downloaded checkpoint folder, when kept."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "repo": self.repo,
            "commit": self.commit,
            "kind": self.kind,
            "models": [model.to_dict() for model in self.models],
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
        }


def parse_repo(text: str) -> RepoRef:
    """Parse OWNER/NAME[@REVISION]; a malformed name is an InputError."""
    repo_id, _, revision = text.strip().partition("@")
    if repo_id.count("/") != 1:
        raise InputError(f"{text}: give the repository as OWNER/NAME, e.g. facebook/MobileLLM-R1-950M")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InputError(f"{text}: not a valid Hugging Face repository name") from None
    return RepoRef(repo_id, revision or None)


def downloads_dir() -> Path:
    """Where pulls keep their (resumable) downloads."""
    return store_home() / "downloads"


def pull(
    ref: RepoRef,
    levels: list[QuantLevel],
    *,
    keep_checkpoint: bool = False,
    token: str | None = None,
    downloads: DownloadProgress | None = None,
    conversion: ConvertProgress | None = None,
    endpoint: str | None = None,
) -> PullResult:
    """Bring `ref` into the store at `levels`; see the module docstring.

    `endpoint` is the hub's URL (default: HF_ENDPOINT, else https://huggingface.co).
    """
    hub = _Hub(ref, token, downloads or SilentDownloads(), endpoint or hf_constants.ENDPOINT)
    with _hub_errors(hub):
        commit, files = hub.listing()
        folder = downloads_dir() / ref.repo_id.replace("/", "--") / commit
        try:
            if "config.json" in files and any(name.endswith(".safetensors") for name in files):
                result = _pull_checkpoint(hub, commit, files, folder, levels, conversion)
                result.checkpoint = folder if keep_checkpoint else None
            elif any(name.lower().endswith(".gguf") for name in files):
                result = _pull_gguf(hub, commit, files, folder, levels, conversion)
            else:
                raise InputError(
                    f"{ref}: the repository has neither safetensors weights and a config.json nor GGUF files"
                )
        except InputError:
            _discard(folder)  # refused: nothing to resume (network errors keep the partial files)
            raise
    if result.checkpoint is None:
        _discard(folder)
    return result


def _discard(folder: Path) -> None:
    """Remove one commit's downloads, and the repository's folder once it is empty."""
    shutil.rmtree(folder, ignore_errors=True)
    with suppress(OSError):
        folder.parent.rmdir()


def _pull_checkpoint(
    hub: _Hub,
    commit: str,
    files: dict[str, int | None],
    folder: Path,
    levels: list[QuantLevel],
    conversion: ConvertProgress | None,
) -> PullResult:
    hub.download("config.json", folder, commit)
    spec_from_config(read_config(folder), f"{hub.ref}: config.json")
    name = hub.ref.repo_id.rsplit("/", 1)[-1]
    result = PullResult(hub.ref.repo_id, commit, "safetensors")
    # with a name given, the converter names files NAME-LABEL.gguf (gguf's naming convention)
    targets = {
        level.name: models_dir() / f"{gguf.naming_convention(None, name, None, None, None, level.label)}.gguf"
        for level in levels
    }
    missing = [level for level in levels if not targets[level.name].is_file()]
    if missing:
        for needed in _checkpoint_files(hub, commit, files, folder):
            hub.download(needed, folder, commit)
        origin = _pulled_origin(hub.ref, commit)
        for converted in convert_checkpoint(
            folder, missing, models_dir(), name=name, progress=conversion, origin=origin
        ):
            result.models.append(
                PulledModel(converted.summary.path, converted.level.label, converted.summary.file_bytes, "converted")
            )
    for level in levels:
        if level not in missing:
            result.models.append(PulledModel.in_store(targets[level.name], level, "already in the store"))
    return result


def _pulled_origin(ref: RepoRef, commit: str) -> Origin:
    """The origin recorded for a file pulled from `ref` at `commit`."""
    return Origin("pulled", f"{ref.repo_id}@{commit[:12]}")


def _checkpoint_files(hub: _Hub, commit: str, files: dict[str, int | None], folder: Path) -> list[str]:
    """The weights (single file, or the index and its shards) and the extras the repository has."""
    if WEIGHT_INDEX in files:
        hub.download(WEIGHT_INDEX, folder, commit)
        try:
            shards = sorted(set(json.loads((folder / WEIGHT_INDEX).read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{hub.ref}: {WEIGHT_INDEX} is not a valid safetensors index ({error})") from None
        absent = [shard for shard in shards if shard not in files]
        if absent:
            raise InputError(f"{hub.ref}: shard(s) named in {WEIGHT_INDEX} are missing: {', '.join(absent)}")
        weights = shards
    elif SINGLE_WEIGHTS in files:
        weights = [SINGLE_WEIGHTS]
    else:
        weights = sorted(name for name in files if name.endswith(".safetensors") and "/" not in name)
    extras = [name for name in files if name in CHECKPOINT_EXTRAS or _LICENSE_FILE.match(name)]
    return sorted(extras) + weights


def _pull_gguf(
    hub: _Hub,
    commit: str,
    files: dict[str, int | None],
    folder: Path,
    levels: list[QuantLevel],
    conversion: ConvertProgress | None,
) -> PullResult:
    result = PullResult(hub.ref.repo_id, commit, "gguf")
    chosen = {level.name: _gguf_for_level(hub.ref, files, level) for level in levels}
    for level in levels:
        remote = chosen[level.name]
        target = models_dir() / Path(remote).name
        if target.is_file():
            result.models.append(PulledModel.in_store(target, level, "already in the store"))
            continue
        downloaded = hub.download(remote, folder, commit)
        target.parent.mkdir(parents=True, exist_ok=True)
        origin = _pulled_origin(hub.ref, commit)
        repaired = needs_repair(downloaded)
        if repaired:  # a file we write: the origin goes into its own keys
            repair_gguf(downloaded, target, progress=conversion, origin=origin.kind, origin_source=origin.source)
        else:  # kept byte for byte: the origin goes into a record beside it
            validate_model_file(downloaded)
            write_origin_record(target, origin)
            try:
                os.replace(downloaded, target)
            except BaseException:
                remove_model(target)
                raise
        result.models.append(PulledModel.in_store(target, level, "repaired" if repaired else "downloaded"))
    return result


def _names_level(path: str, level: QuantLevel) -> bool:
    """Whether a GGUF file name carries `level`'s label (Q4_K_M, not Q4_K or IQ4_K_M)."""
    pattern = rf"(?<![A-Za-z0-9]){re.escape(level.label)}(?![A-Za-z0-9_])"
    return re.search(pattern, Path(path).name, re.IGNORECASE) is not None


def _gguf_for_level(ref: RepoRef, files: dict[str, int | None], level: QuantLevel) -> str:
    ggufs = sorted(name for name in files if name.lower().endswith(".gguf"))
    matches = [name for name in ggufs if _names_level(name, level)]
    if not matches:
        offered = sorted({lv.label for lv in QUANT_LEVELS.values() for name in ggufs if _names_level(name, lv)})
        raise InputError(f"{ref} has no {level.label} GGUF file; it offers: {', '.join(offered) or 'none by name'}")
    whole = [name for name in matches if not _SPLIT_GGUF.search(name)]
    if not whole:
        raise InputError(
            f"{ref}: the {level.label} file is split into parts ({matches[0]}, ...), which is not supported"
        )
    return min(whole, key=lambda name: (name.count("/"), len(name)))


class _Hub:
    """One repository on the hub, reached through huggingface_hub."""

    def __init__(self, ref: RepoRef, token: str | None, progress: DownloadProgress, endpoint: str) -> None:
        self.ref = ref
        self.token = token
        self.progress = progress
        self.endpoint = endpoint.rstrip("/")

    def listing(self) -> tuple[str, dict[str, int | None]]:
        """The commit the revision points at, and every file of it with its size."""
        info = HfApi(endpoint=self.endpoint, token=self.token).model_info(
            self.ref.repo_id, revision=self.ref.revision, files_metadata=True
        )
        if not info.sha:
            raise InputError(f"{self.ref}: the hub did not say which commit this revision is")
        return info.sha, {sibling.rfilename: sibling.size for sibling in info.siblings or []}

    def download(self, name: str, folder: Path, commit: str) -> Path:
        """Fetch one file of `commit` into `folder`, continuing a partial download if there is one."""
        target = folder / name
        if target.is_file():
            return target
        url = hf_hub_url(self.ref.repo_id, name, revision=commit, endpoint=self.endpoint)
        metadata = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        location = metadata.location or url
        if urlsplit(location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)  # a CDN's signed URL, never our token
        partial = target.with_name(f".{target.name}.incomplete")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(partial.with_name(partial.name + ".lock")):
            with partial.open("ab") as handle:
                done = handle.tell()
                if metadata.size is not None and done > metadata.size:
                    handle.truncate(0)
                    done = 0
                self.progress.file_started(name, metadata.size, done)
                http_get(
                    location,
                    handle,
                    resume_size=done,
                    headers=headers,
                    expected_size=metadata.size,
                    displayed_filename=name,
                    tqdm_class=cast(Any, functools.partial(_ByteCounter, self.progress.advanced)),
                )
            os.replace(partial, target)
        self.progress.file_finished(name)
        return target


class _ByteCounter:
    """What huggingface_hub's http_get takes for a tqdm bar: forwards the byte counts."""

    def __init__(self, sink: Callable[[int], None], **_: Any) -> None:
        self.sink = sink

    def __enter__(self) -> _ByteCounter:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, count: int) -> None:
        """`count` bytes more (negative when a restarted transfer drops what was counted)."""
        self.sink(count)


@contextmanager
def _hub_errors(hub: _Hub) -> Iterator[None]:
    """Turn huggingface_hub's and the network's errors into one-line InputErrors."""
    ref, token, endpoint = hub.ref, hub.token, hub.endpoint
    page = f"{endpoint}/{ref.repo_id}"
    try:
        yield
    except GatedRepoError:
        if token or get_token():
            raise InputError(
                f"{ref} is gated and this account has no access yet: accept the license on {page} "
                "(approval can take a while), then pull again"
            ) from None
        raise InputError(
            f"{ref} is gated: accept the license on {page}, then log in with `hf auth login` or pass --token"
        ) from None
    except RevisionNotFoundError:
        raise InputError(f"{ref}: the repository has no revision {ref.revision}") from None
    except RepositoryNotFoundError:
        raise InputError(
            f"{ref.repo_id}: no such model repository on the hub ({endpoint}); "
            "a private one needs `hf auth login` or --token"
        ) from None
    except EntryNotFoundError as error:
        if isinstance(error, LocalEntryNotFoundError):
            raise InputError(f"cannot reach the hub ({endpoint}); check the network connection") from None
        raise InputError(f"{ref}: a file the listing named is missing on the hub ({error})") from None
    except OfflineModeIsEnabled:
        raise InputError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); pull needs the network") from None
    except HfHubHTTPError as error:
        status = error.response.status_code
        if status == 401:
            raise InputError(
                "the hub refused the token (HTTP 401): log in again with `hf auth login` or pass --token"
            ) from None
        if status == 403:
            raise InputError(
                f"{ref}: access denied (HTTP 403); the token lacks permission for this repository"
            ) from None
        raise InputError(f"{ref}: the hub answered HTTP {status}; try again later") from None
    except httpx2.TransportError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot reach the hub ({endpoint}): {reason}; check the network connection") from None
