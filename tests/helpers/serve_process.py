"""`mllm-cpu serve` as a real subprocess on a free loopback port, started and stopped by a test."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from helpers.cli_runner import MLLM_CPU

START_SECONDS = 120


class ServeProcess:
    """A running `mllm-cpu serve --port 0 ARGS`; `url` is its /v1 base URL, read from the startup line."""

    def __init__(self, *args: str, home: Path, environment: dict[str, str] | None = None) -> None:
        """`environment` replaces the test's own (os.environ) as the server's."""
        env = {**(os.environ if environment is None else environment), "MLLM_CPU_HOME": str(home)}
        self.process = subprocess.Popen(
            [MLLM_CPU, "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._startup_url()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _startup_url(self) -> str:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith("serving "):
                return line.split(" at ", 1)[1].split()[0]
        self.process.kill()
        self.process.wait()
        raise AssertionError(f"serve did not start: {''.join(self.stderr)}")

    @property
    def base(self) -> str:
        """The server's root URL (no /v1)."""
        return self.url.removesuffix("/v1")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def post(url: str, body: bytes, key: str | None = None, timeout: float = 120) -> tuple[int, dict[str, Any], Any]:
    """POST raw bytes; (status, JSON body, headers), error statuses included."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def post_declaring(url: str, length: int, key: str | None = None, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    """POST headers that declare a `length`-byte body and send none of it: a server that refuses the
    size replies at once, which urllib cannot read while it is still sending (a broken pipe)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        if key:
            connection.putheader("Authorization", f"Bearer {key}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def get(url: str, key: str | None = None, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    """GET; (status, JSON body), error statuses included."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
