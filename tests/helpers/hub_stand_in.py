"""A local stand-in for the Hugging Face hub's HTTP API, serving real files, for pull tests.

It answers what huggingface_hub calls: `GET /api/models/OWNER/NAME[/revision/REV]` (the model
info with every file and its size) and `HEAD`/`GET /OWNER/NAME/resolve/REV/PATH` (X-Repo-Commit,
ETag, X-Linked-Size, Content-Length; Range requests answered 206). A gated repository answers
401 without a token and 403 with a token that was not granted, both with `X-Error-Code:
GatedRepo`; an unknown repository 404 `RepoNotFound`; an unknown revision 404
`RevisionNotFound`. It records every request, can drop the connection after some bytes of a
file, or stall there until released, and refuses to serve more than `max_requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_MODEL_INFO = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CHUNK = 1 << 16


@dataclass
class StandInRepo:
    """One repository: repo path -> local file, and who may read it."""

    files: dict[str, Path]
    gated: bool = False
    granted_tokens: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.etags: dict[str, str] = {}


@dataclass(frozen=True)
class SeenRequest:
    """A request the stand-in received."""

    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class HubStandIn:
    """The server; start() returns its URL (use as HF_ENDPOINT), stop() ends it."""

    repos: dict[str, StandInRepo]
    max_requests: int = 200
    requests: list[SeenRequest] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)
    """repo path -> bytes sent before the connection is closed, once (for the next GET)."""
    stall_after: dict[str, int] = field(default_factory=dict)
    """repo path -> bytes sent before the response stalls until `release` is set, once."""
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    """Set by start(): http://127.0.0.1:PORT."""

    def start(self) -> str:
        """Serve on 127.0.0.1 at a free port, in a background thread."""
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket (stalled responses are released first)."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def seen(self, repo_path: str, method: str | None = None) -> list[SeenRequest]:
        """The requests for one repository file (by its path inside the repository)."""
        return [
            r
            for r in self.requests
            if "/resolve/" in r.path and r.path.endswith("/" + repo_path) and method in (None, r.method)
        ]


def commit_of(repo_id: str) -> str:
    """The 40-hex commit the stand-in reports for a repository's main branch."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    hub: HubStandIn

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        """Quiet: the tests read `hub.requests` instead."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        hub = self.hub
        hub.requests.append(
            SeenRequest(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        if len(hub.requests) > hub.max_requests:
            self._error(503, "Overloaded", "too many requests for a test")
            return
        if match := _MODEL_INFO.match(path):
            self._model_info(match.group(1), match.group(2))
        elif match := _RESOLVE.match(path):
            self._resolve(match.group(1), match.group(2), match.group(3), body)
        else:
            self._error(404, "NotFound", "no such endpoint")

    def _repo(self, repo_id: str, revision: str | None) -> StandInRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if revision not in (None, "main", commit_of(repo_id)):
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return None
        return repo

    def _model_info(self, repo_id: str, revision: str | None) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        siblings = [{"rfilename": name, "size": local.stat().st_size} for name, local in sorted(repo.files.items())]
        payload = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit_of(repo_id),
            "private": False,
            "gated": "manual" if repo.gated else False,
            "siblings": siblings,
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _resolve(self, repo_id: str, revision: str, name: str, body: bool) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if repo.gated:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if not token:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated.")
                return
            if token not in repo.granted_tokens:
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the list.")
                return
        local = repo.files.get(name)
        if local is None:
            self._error(404, "EntryNotFound", f"{name} does not exist", commit=commit_of(repo_id))
            return
        size = local.stat().st_size
        if name not in repo.etags:
            repo.etags[name] = hashlib.sha256(local.read_bytes()).hexdigest()
        start = 0
        if requested := self.headers.get("Range"):
            start = int(requested.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit_of(repo_id))
        self.send_header("ETag", f'"{repo.etags[name]}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if not body:
            return
        cut = self.hub.cut_after.pop(name, None)
        stall = self.hub.stall_after.pop(name, None)
        limit = cut if cut is not None else stall
        with local.open("rb") as handle:
            handle.seek(start)
            sent = 0
            while chunk := handle.read(_CHUNK if limit is None else min(_CHUNK, limit - sent)):
                self.wfile.write(chunk)
                sent += len(chunk)
        self.wfile.flush()
        if stall is not None:
            self.hub.release.wait(timeout=60)
        if limit is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        data = message.encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
