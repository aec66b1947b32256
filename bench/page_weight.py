"""The tutor page's weight, and how soon it paints over a slow link, measured in Chromium.

    python -m mllm_cpu.bench.page_weight [--url http://BOARD:8080/] [--kbit 1000] [--latency-ms 100]
        [--runs 3] [--chromium /usr/bin/chromium] [--json]

Weight: each file of the page (HTML, CSS, JS) as `serve` sends it, plain and gzipped (the server
gzips for browsers that take it), and their total. First paint: Chromium, driven by Playwright (a
test dependency: `pip install -e '.[test]'`), loads the page with its cache disabled over a link
emulated by DevTools (`Network.emulateNetworkConditions`; by default 1 Mbit/s each way and 100 ms
latency, a slow classroom link) and reads the browser's own paint timings (PerformancePaintTiming:
first-paint, first-contentful-paint) and the load event; the median of `--runs` loads is printed.
Without `--url` the page is served by a server of its own on loopback (`tutor_page.page_app`, no
model): the first paint needs only the page's files. Nothing is fetched from the internet.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from mllm_cpu.tutor_page import page_app, page_files

DEFAULT_KBIT = 1000
DEFAULT_LATENCY_MS = 100
LOAD_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class FileWeight:
    """One file of the page: its path, bytes as sent plain and gzipped."""

    path: str
    bytes: int
    gzip_bytes: int


@dataclass(frozen=True)
class PaintTimes:
    """One load over the emulated link, in milliseconds from the navigation's start, and bytes received."""

    first_paint_ms: float
    first_contentful_paint_ms: float
    load_ms: float
    transferred_bytes: int


@dataclass(frozen=True)
class PageWeight:
    """The page's files, their totals, the link and the median paint times of the runs."""

    files: list[FileWeight]
    total_bytes: int
    total_gzip_bytes: int
    kbit_per_second: int
    latency_ms: int
    runs: list[PaintTimes]

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in self.runs))


def file_weights() -> list[FileWeight]:
    """The page's files as `serve` sends them."""
    return [FileWeight(path, len(page.body), len(page.gzipped)) for path, page in page_files().items()]


@contextmanager
def own_server() -> Iterator[str]:
    """The page alone, served on a free loopback port; yields its URL."""
    import uvicorn

    config = uvicorn.Config(page_app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the page's server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def paint_times(
    url: str, kbit: int, latency_ms: int, runs: int, chromium: str | None, browser: Any = None
) -> list[PaintTimes]:
    """`runs` cold loads of `url` in headless Chromium over the emulated link: in `browser` (a Playwright
    Browser) when given, else in a Chromium launched for them (`chromium`: its executable)."""
    if browser is not None:
        return [_cold_load(browser, url, kbit, latency_ms) for _ in range(runs)]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            return [_cold_load(launched, url, kbit, latency_ms) for _ in range(runs)]
        finally:
            launched.close()


def _cold_load(browser: Any, url: str, kbit: int, latency_ms: int) -> PaintTimes:
    bytes_per_second = kbit * 1000 / 8
    conditions = {
        "offline": False,
        "latency": latency_ms,
        "downloadThroughput": bytes_per_second,
        "uploadThroughput": bytes_per_second,
    }
    context = browser.new_context()
    try:
        page = context.new_page()
        session = context.new_cdp_session(page)
        session.send("Network.enable")
        session.send("Network.setCacheDisabled", {"cacheDisabled": True})
        session.send("Network.emulateNetworkConditions", conditions)
        page.goto(url, wait_until="load", timeout=LOAD_TIMEOUT_MS)
        page.wait_for_function("performance.getEntriesByType('paint').length >= 2", timeout=LOAD_TIMEOUT_MS)
        timings: dict[str, Any] = page.evaluate(
            """() => {
                const paint = Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
                const navigation = performance.getEntriesByType('navigation')[0];
                const resources = performance.getEntriesByType('resource')
                    .filter(e => !e.name.includes('/v1/') && !e.name.includes('/extras/'));
                return {
                    fp: paint['first-paint'], fcp: paint['first-contentful-paint'], load: navigation.loadEventEnd,
                    bytes: navigation.transferSize + resources.reduce((sum, e) => sum + e.transferSize, 0),
                };
            }"""
        )
    finally:
        context.close()
    return PaintTimes(round(timings["fp"], 1), round(timings["fcp"], 1), round(timings["load"], 1), timings["bytes"])


def measure(
    url: str | None = None,
    kbit: int = DEFAULT_KBIT,
    latency_ms: int = DEFAULT_LATENCY_MS,
    runs: int = 3,
    chromium: str | None = None,
    browser: Any = None,
) -> PageWeight:
    """The page's weight and its paint times over the link (the page served here when `url` is None; loaded
    in `browser` when given, see `paint_times`)."""
    files = file_weights()
    if url is None:
        with own_server() as served:
            times = paint_times(served, kbit, latency_ms, runs, chromium, browser)
    else:
        times = paint_times(url, kbit, latency_ms, runs, chromium, browser)
    return PageWeight(
        files,
        sum(f.bytes for f in files),
        sum(f.gzip_bytes for f in files),
        kbit,
        latency_ms,
        times,
    )


def main(argv: list[str] | None = None) -> int:
    """Print the page's weight and first paint (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running `mllm-cpu serve`'s page (default: serve the page here)")
    parser.add_argument("--kbit", type=int, default=DEFAULT_KBIT, help="the link's speed each way, kbit/s")
    parser.add_argument("--latency-ms", type=int, default=DEFAULT_LATENCY_MS, help="the link's added latency")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="the Chromium to drive")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    result = measure(options.url, options.kbit, options.latency_ms, max(1, options.runs), options.chromium)
    if options.json:
        print(json.dumps(asdict(result), indent=2))
        return 0
    print("| file | bytes | gzip |")
    print("|---|---:|---:|")
    for item in result.files:
        print(f"| `{item.path}` | {item.bytes:,} | {item.gzip_bytes:,} |")
    print(f"| total | {result.total_bytes:,} | {result.total_gzip_bytes:,} |")
    print()
    link = f"{result.kbit_per_second:,} kbit/s, {result.latency_ms} ms latency"
    print(f"over {link}, median of {len(result.runs)} cold loads:")
    print(f"  first paint             {result.median('first_paint_ms'):8.0f} ms")
    print(f"  first contentful paint  {result.median('first_contentful_paint_ms'):8.0f} ms")
    print(f"  load event              {result.median('load_ms'):8.0f} ms")
    print(f"  bytes received          {result.median('transferred_bytes'):8,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
