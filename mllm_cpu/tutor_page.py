"""The tutor page that `serve` answers on `GET /`: plain HTML, CSS and JS from `mllm_cpu/web/`.

The files hold no data, so they are served to anyone who reaches the server (before the API key
check, like /health); everything the page shows it fetches from the API with the key the user gives.
Every response carries a Content-Security-Policy that lets the page run only its own script and
styles and connect only to its own server, so even HTML that got past the renderer's sanitiser
could not run script or load anything. Files are sent gzipped when the browser takes it, with an
ETag (304 when unchanged). `page_app` serves the page alone (for `bench/page_weight.py`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/tutor.css": ("tutor.css", "text/css; charset=utf-8"),
    "/static/tutor.js": ("tutor.js", "text/javascript; charset=utf-8"),
}
"""Path -> (file in mllm_cpu/web/, content type)."""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass(frozen=True)
class PageFile:
    """One file of the page: its bytes, gzipped bytes, content type and ETag."""

    name: str
    content_type: str
    body: bytes
    gzipped: bytes

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'


@functools.cache
def page_files() -> dict[str, PageFile]:
    """The page's files by path, read once from the package."""
    folder = resources.files("mllm_cpu") / "web"
    files = {}
    for path, (name, content_type) in PAGE_FILES.items():
        body = (folder / name).read_bytes()
        files[path] = PageFile(name, content_type, body, gzip.compress(body, 9, mtime=0))
    return files


def is_page(path: str) -> bool:
    """Whether `path` is one of the page's files."""
    return path in PAGE_FILES


async def send_page(scope: Scope, send: Send) -> bool:
    """Answer a GET or HEAD of a page file (200, or 304 when the ETag matches); False for another method
    (the caller refuses it)."""
    if scope["method"] not in ("GET", "HEAD"):
        return False
    page = page_files()[scope["path"]]
    request_headers = dict(scope["headers"])
    headers = {**SECURITY_HEADERS, "cache-control": "no-cache", "etag": page.etag, "vary": "accept-encoding"}
    if page.etag.encode("latin-1") in request_headers.get(b"if-none-match", b"").split(b", "):
        await _send(send, 304, headers, b"", head=True)
        return True
    body = page.body
    if b"gzip" in request_headers.get(b"accept-encoding", b""):
        body = page.gzipped
        headers["content-encoding"] = "gzip"
    headers["content-type"] = page.content_type
    await _send(send, 200, headers, body, head=scope["method"] == "HEAD")
    return True


async def _send(send: Send, status: int, headers: dict[str, str], body: bytes, head: bool) -> None:
    raw = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def page_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app serving the page alone (no API behind it): 404 for any other path."""
    if scope["type"] != "http":
        return
    if is_page(scope["path"]) and await send_page(scope, send):
        return
    await _send(send, 404, {"content-type": "text/plain; charset=utf-8"}, b"not found\n", head=False)
