"""The tutor page (`GET /`) in headless Chromium against a real `mllm-cpu serve` of the tiny trained model.

The model adds numbers with worked steps and a boxed answer, so the page shows real reasoning, a real
answer and a real thinking budget. One server (and one with an API key) serves the whole module; each
test gets a fresh browser context (`serve --open` is tested on servers of its own, with Chromium as
$BROWSER). Every test also checks that the page asked nothing of any other
origin and raised no script error. Screenshots go to `$MLLM_CPU_SCREENSHOTS` (else the test's tmp_path).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    CDPSession,
    Page,
    Playwright,
    Route,
    expect,
    sync_playwright,
)

from helpers.arithmetic_task import converted_pair
from helpers.serve_process import ServeProcess, get, post_declaring
from mllm_cpu.tutor_page import CONTENT_SECURITY_POLICY, PAGE_FILES

CHROMIUM = "/usr/bin/chromium"
KEY = "classroom-key-42"
STORE_KEY = "mllm-cpu.tutor.conversations"
TIMEOUT_MS = 20_000
PROBLEM = "What is 2 + 3 + 4?"
expect.set_options(timeout=TIMEOUT_MS)
LONG_PROBLEM = "What is " + " + ".join(["3"] * 60) + "?"
"""Far outside the model's training: it writes thousands of tokens, long enough to stop."""
HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 1">',
    "[click me](javascript:window.__pwned=1)",
    '<svg onload="window.__pwned = 1"></svg>',
    "$\\text{<img src=x onerror='window.__pwned = 1'>}$",
    "\\(\\href{javascript:window.__pwned=1}{x}\\)",
    '<math><mtext><img src=x onerror="window.__pwned = 1"></mtext></math>',
    '<a href="javascript:window.__pwned=1">a</a> <iframe src="javascript:window.__pwned=1"></iframe>',
    "```html\n<script>window.__pwned = 1</script>\n```",
    "\\frac{ unclosed $ and \\boxed{ and " + "{" * 5_000,
]


@pytest.fixture(scope="module")
def target_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_pair(tmp_path_factory.mktemp("trained"))["target"]


@pytest.fixture(scope="module")
def server(target_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = ServeProcess("--model", str(target_gguf), "--threads", "1", home=tmp_path_factory.mktemp("home"))
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def keyed_server(target_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = ServeProcess(
        "--model", str(target_gguf), "--threads", "1", "--api-key", KEY, home=tmp_path_factory.mktemp("home_key")
    )
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=TIMEOUT_MS)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("MLLM_CPU_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Watched:
    """A browser context on one server, with what its pages requested and every script error."""

    def __init__(self, browser: Browser, base: str, **options: Any) -> None:
        self.base = base
        self.context: BrowserContext = browser.new_context(viewport={"width": 1280, "height": 800}, **options)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.context.on("requestfailed", lambda request: self.failed.append((request.url, request.failure or "")))

    def page(self) -> Page:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        return page

    def close(self) -> None:
        self.context.close()
        foreign = [url for url in self.requests if not url.startswith((self.base + "/", "data:"))]
        assert not foreign, f"the page fetched from elsewhere: {foreign}"
        assert not self.errors, f"script errors: {self.errors}"
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"


@pytest.fixture
def watched(browser: Browser, server: ServeProcess) -> Iterator[Watched]:
    context = Watched(browser, server.base)
    yield context
    context.close()


def open_page(watched: Watched, base: str | None = None) -> Page:
    page = watched.page()
    page.goto((base or watched.base) + "/")
    expect(page.locator("#status")).to_have_text("Ready")
    return page


def greedy(page: Page) -> None:
    """Chat requests at temperature 0, so the tiny model writes its best steps (the page sends none)."""

    def handle(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "temperature": 0}))

    page.route("**/v1/chat/completions", handle)


def throttle(page: Page, bytes_per_second: int, session: CDPSession | None = None) -> CDPSession:
    """A slow link for this page (Chromium's network emulation); pass the returned session to change it."""
    if session is None:
        session = page.context.new_cdp_session(page)
        session.send("Network.enable")
    conditions = {"offline": False, "latency": 0, "downloadThroughput": bytes_per_second, "uploadThroughput": 1e6}
    session.send("Network.emulateNetworkConditions", conditions)
    return session


def ask(page: Page, problem: str, task: str = "math", budget: str = "") -> None:
    page.select_option("#task", task)
    page.fill("#budget", budget)
    page.fill("#problem", problem)
    page.click("#send")


def last_reply(page: Page, done: bool = True) -> Any:
    reply = page.locator(".message.assistant").last
    if done:
        expect(reply).to_have_class(re.compile(r"\bdone\b"))
    return reply


def test_a_problem_streams_its_reasoning_then_folds_it_and_shows_the_boxed_answer_as_math(watched: Watched) -> None:
    page = open_page(watched)
    greedy(page)
    throttle(page, 6_000)  # about 20 events a second: the stream can be watched
    page.select_option("#task", "math")
    page.fill("#budget", "256")  # above the model's trace: the reply is not forced, and shows the time left
    page.fill("#problem", PROBLEM)
    page.press("#problem", "Control+Enter")

    reply = page.locator(".message.assistant").last
    reasoning = reply.locator("details.reasoning")
    expect(reply).to_have_class(re.compile(r"\bstreaming\b"))
    expect(reasoning.locator(".reasoning-text")).to_contain_text("=")  # worked steps arrive while it streams
    assert reasoning.evaluate("details => details.open")
    assert reply.locator(".answer-box").is_hidden()
    expect(reasoning.locator(".stats")).to_contain_text(
        re.compile(r"\d+ tokens · [\d.]+ tok/s · about \d+ s left of 256")
    )
    expect(page.locator("#stop")).to_be_enabled()

    last_reply(page)
    assert not reasoning.evaluate("details => details.open")  # folded once the answer came
    answer = reply.locator(".answer-box")
    expect(answer).to_be_visible()
    expect(answer.locator(".answer-value math")).to_have_count(1)
    expect(answer.locator(".answer-value")).to_have_text("9")
    expect(reply.locator(".content math mrow.boxed")).to_have_count(1)
    expect(reply.locator(".meta")).to_contain_text(re.compile(r"\d+ tokens in [\d.]+ m?s"))
    expect(page.locator("#stop")).to_be_disabled()
    reasoning.locator("summary").click()  # and it opens again on demand
    assert reasoning.evaluate("details => details.open")
    expect(reasoning.locator(".reasoning-text")).to_contain_text("Final answer:")


def test_a_small_budget_forces_the_answer(watched: Watched) -> None:
    page = open_page(watched)
    greedy(page)
    ask(page, PROBLEM, budget="3")
    reply = last_reply(page)
    expect(reply.locator(".meta")).to_contain_text("the thinking budget (3) ran out, so the answer was forced")
    expect(reply.locator(".reasoning .stats")).to_have_text("· 3 tokens")
    expect(reply.locator(".answer-box .answer-value math")).to_have_count(1)


def test_stop_ends_the_stream_and_the_next_problem_is_answered(watched: Watched, server: ServeProcess) -> None:
    page = open_page(watched)
    link = throttle(page, 2_000)
    ask(page, LONG_PROBLEM)
    reply = last_reply(page, done=False)
    expect(reply.locator(".reasoning .stats")).to_contain_text(re.compile(r"[1-9]\d* tokens"))
    page.click("#stop")
    expect(reply).to_have_class(re.compile(r"\bended\b"))
    throttle(page, 10_000_000, link)  # the last render of what was shown comes quickly
    reply = last_reply(page)
    expect(reply.locator(".meta")).to_contain_text("stopped")
    chat_failures = [failure for url, failure in watched.failed if url.endswith("/v1/chat/completions")]
    assert chat_failures and "ERR_ABORTED" in chat_failures[0]
    shown = reply.inner_text()
    time.sleep(0.5)
    assert reply.inner_text() == shown  # nothing arrives after the stop
    deadline = time.monotonic() + 10
    while get(f"{server.base}/health")[1]["requests"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(f"{server.base}/health")[1]["requests"] == 0  # the server let the reply go

    greedy(page)
    page.click("#new-conversation")  # the stopped reply's partial text is not in the next prompt
    ask(page, PROBLEM)
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(last_reply(page).locator(".answer-box math")).to_have_count(1)
    expect(last_reply(page).locator(".meta")).not_to_contain_text("stopped")


def test_a_server_with_a_key_asks_for_it_refuses_a_wrong_one_and_works_with_the_right_one(
    browser: Browser, keyed_server: ServeProcess
) -> None:
    watched = Watched(browser, keyed_server.base)
    try:
        page = watched.page()
        page.goto(keyed_server.base + "/")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#api-key")).to_be_focused()
        expect(page.locator("#status")).to_have_text("Waiting for the key")
        assert page.evaluate(
            "['main', 'ask'].every(id => document.getElementById(id).inert)"
        )  # nothing else until then

        page.fill("#api-key", "not-the-key")
        page.press("#api-key", "Enter")
        expect(page.locator("#login-error")).to_have_text("That key was not accepted. Check it and try again.")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0

        page.fill("#api-key", KEY)
        page.click("#login-form button[type=submit]")
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#status")).to_have_text("Ready")
        expect(page.locator("#problem")).to_be_focused()
        greedy(page)
        ask(page, PROBLEM)
        expect(last_reply(page).locator(".answer-box math")).to_have_count(1)

        page.reload()  # the key lasts the session: no second prompt
        expect(page.locator("#status")).to_have_text("Ready")
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator(".message.assistant .answer-box math")).to_have_count(1)
    finally:
        watched.close()


def test_the_page_is_public_with_a_strict_policy_and_the_api_is_not(keyed_server: ServeProcess) -> None:
    import urllib.request

    for path, kind in (("/", "text/html"), ("/static/tutor.js", "text/javascript"), ("/static/tutor.css", "text/css")):
        with urllib.request.urlopen(keyed_server.base + path, timeout=10) as response:
            assert response.status == 200 and response.headers["content-type"].startswith(kind)
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
            body = response.read().decode("utf-8")
        if path == "/":  # no inline script or style for the policy to allow
            assert not re.search(r"<script(?![^>]*\bsrc=)", body) and "<style" not in body and "style=" not in body
    status, error = _post(keyed_server.base + "/extras/render", {"text": "$x$"})
    assert status == 401 and error["error"]["code"] == "invalid_api_key"
    status, reply = _post(keyed_server.base + "/extras/render", {"text": "$x$", "task": "math"}, KEY)
    assert status == 200 and "<math" in reply["html"] and reply["answer"] is None
    status, error = _post(keyed_server.base + "/extras/render", {"text": 5}, KEY)
    assert status == 400 and error["error"]["param"] == "text"
    status, error = post_declaring(keyed_server.base + "/extras/render", 2 << 20, KEY)
    assert status == 413 and error["error"]["code"] == "body_too_large"


def _serve_opening(model: Path, home: Path, browser: str) -> ServeProcess:
    """`serve --open` with `browser` as $BROWSER and no display or terminal, so it is the only browser."""
    hidden = ("DISPLAY", "WAYLAND_DISPLAY", "TERM", "BROWSER")
    environment = {**{k: v for k, v in os.environ.items() if k not in hidden}, "BROWSER": browser}
    return ServeProcess("--model", str(model), "--threads", "1", "--open", home=home, environment=environment)


def test_open_shows_the_page_in_the_browser(target_gguf: Path, tmp_path: Path) -> None:
    dom = tmp_path / "page.html"
    browser = tmp_path / "browser"
    browser.write_text(
        "#!/bin/sh\n"
        f"{CHROMIUM} --headless --no-sandbox --disable-gpu --user-data-dir={tmp_path / 'profile'} "
        f'--virtual-time-budget=10000 --dump-dom "$1" > {dom}.part && mv {dom}.part {dom}\n'
    )
    browser.chmod(0o755)
    process = _serve_opening(target_gguf, tmp_path / "home", str(browser))
    try:
        deadline = time.monotonic() + 60
        while not dom.exists() and time.monotonic() < deadline and process.process.poll() is None:
            time.sleep(0.2)
        assert dom.exists(), "".join(process.stderr)
        page = dom.read_text()
        assert "<title>Tutor</title>" in page
        assert f'<option value="{target_gguf.stem}"' in page  # the page's script asked the server for its models
    finally:
        assert process.stop() == 0
    assert not any("warning" in line for line in process.stderr)


def test_open_without_a_browser_warns_and_serves(target_gguf: Path, tmp_path: Path) -> None:
    process = _serve_opening(target_gguf, tmp_path / "home", "/bin/false")
    try:
        expected = f"warning: no web browser could be opened here: open {process.base}/ in one\n"
        deadline = time.monotonic() + 30
        while expected not in process.stderr and time.monotonic() < deadline:
            time.sleep(0.1)
        assert expected in process.stderr, "".join(process.stderr)
        assert get(f"{process.base}/health")[0] == 200
    finally:
        assert process.stop() == 0


def test_the_page_files_are_package_data() -> None:
    """A non-editable install carries the page: each file is in mllm_cpu/web/ and matched by package-data."""
    root = Path(__file__).resolve().parent.parent
    declared = re.search(r'^"mllm_cpu" = \[(.*)\]$', (root / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared is not None
    patterns = re.findall(r'"([^"]+)"', declared[1])
    for name, _ in PAGE_FILES.values():
        assert (root / "mllm_cpu" / "web" / name).is_file()
        assert any(fnmatch.fnmatch(f"web/{name}", pattern) for pattern in patterns), name


def _post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
    from helpers.serve_process import post

    status, data, _ = post(url, json.dumps(body).encode(), key=key, timeout=30)
    return status, data


def test_hostile_text_through_the_rendering_path_runs_no_script(browser: Browser, server: ServeProcess) -> None:
    watched = Watched(browser, server.base, bypass_csp=True)  # the page's own defences, without the policy's
    try:
        messages: list[dict[str, str]] = []
        for text in HOSTILE:
            messages.append({"role": "user", "content": text, "task": "math"})
            messages.append({"role": "assistant", "content": text, "reasoning": text, "task": "python"})
        stored = {"current": "hostile", "conversations": [{"id": "hostile", "title": "x", "messages": messages}]}
        watched.context.add_init_script(
            f"if (!localStorage.getItem({json.dumps(STORE_KEY)})) "
            f"localStorage.setItem({json.dumps(STORE_KEY)}, {json.dumps(json.dumps(stored))});"
        )
        page = open_page(watched)
        expect(page.locator(".message")).to_have_count(len(messages))
        _wait_rendered(page)
        ask(page, "\n\n".join(HOSTILE[:6]))  # typed, then streamed and rendered live
        last_reply(page)
        _wait_rendered(page)
        page.wait_for_timeout(500)  # time for an image's onerror to fire, had one got in
        assert page.evaluate("typeof window.__pwned") == "undefined"
        found = page.evaluate(
            """() => {
                const all = [...document.querySelectorAll('#conversation *')];
                return {
                    tags: all.filter(e => ['script', 'img', 'iframe', 'svg', 'style', 'object'].includes(e.localName))
                        .map(e => e.localName),
                    handlers: all.flatMap(e => [...e.attributes].filter(a => a.name.startsWith('on'))
                        .map(a => e.localName + ' ' + a.name)),
                    links: [...document.querySelectorAll('#conversation [href]')].map(e => e.getAttribute('href'))
                        .filter(h => !/^https?:|^mailto:/.test(h)),
                    text: document.getElementById('conversation').innerText,
                };
            }"""
        )
        assert found["tags"] == [] and found["handlers"] == [] and found["links"] == []
        assert "<script>window.__pwned = 1</script>" in found["text"]  # shown, as text
    finally:
        watched.close()


def _wait_rendered(page: Page) -> None:
    """Until every text on the page is rendered (no plain tail left)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.tail')].every(t => t.textContent === '')", timeout=TIMEOUT_MS
    )


def test_conversations_stay_in_the_browser(watched: Watched) -> None:
    page = open_page(watched)
    greedy(page)
    ask(page, PROBLEM)
    last_reply(page)
    stored = json.loads(page.evaluate(f"localStorage.getItem({json.dumps(STORE_KEY)})"))
    first = stored["conversations"][0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][1]["content"] == "\\boxed{9}" and "Final answer:" in first["messages"][1]["reasoning"]

    page.reload()
    expect(page.locator(".message")).to_have_count(2)
    expect(page.locator(".answer-box math")).to_have_count(1)
    page.click("#new-conversation")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#problem")).to_be_focused()
    assert page.locator("#history option").count() == 2
    page.select_option("#history", first["id"])
    expect(page.locator(".message")).to_have_count(2)
    models = page.locator("#model option")
    expect(models).to_have_count(1)
    assert models.first.get_attribute("value") == json.loads(_models(watched.base))["data"][0]["id"]


def _models(base: str) -> str:
    import urllib.request

    with urllib.request.urlopen(base + "/v1/models", timeout=10) as response:
        return str(response.read().decode("utf-8"))


def test_every_control_is_labelled_and_reachable_by_keyboard(watched: Watched) -> None:
    page = open_page(watched)
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.id || e.outerHTML)"""
    )
    assert unnamed == []
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id"))
    assert {"model", "new-conversation", "history", "problem", "task", "budget", "send"} <= set(reached)
    greedy(page)
    page.focus("#problem")
    page.keyboard.type(PROBLEM)
    page.keyboard.press("Control+Enter")
    expect(last_reply(page).locator(".answer-box math")).to_have_count(1)
    expect(page.locator(".message.assistant")).to_have_count(1)


def test_a_code_answer_is_highlighted_with_a_copy_button(watched: Watched, server: ServeProcess) -> None:
    """The model writes no code, so a stored reply stands in for one: the page renders stored replies
    as it renders streamed ones."""
    reply = "Here it is:\n\n```python\ndef add(a, b):\n    return a + b\n```"
    messages = [
        {"role": "user", "content": "Write add in python", "task": "python"},
        {"role": "assistant", "content": reply, "reasoning": "Think $a+b$.", "task": "python"},
    ]
    stored = {"current": "code", "conversations": [{"id": "code", "title": "add", "messages": messages}]}
    watched.context.add_init_script(f"localStorage.setItem({json.dumps(STORE_KEY)}, {json.dumps(json.dumps(stored))});")
    watched.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
    page = open_page(watched)
    final = page.locator(".message.assistant .code.final")
    expect(final).to_have_count(1)
    expect(final.locator(".code-bar")).to_contain_text("Final code · python")
    expect(final.locator("pre .tok-k")).to_have_text(["def", "return"])
    final.get_by_role("button", name="Copy the final code").click()
    expect(final.locator(".code-bar button")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b\n"
    expect(page.locator(".message.assistant .answer-box")).to_be_hidden()


def test_screenshots_at_desktop_and_phone_width_without_horizontal_scroll(
    browser: Browser, server: ServeProcess, screenshots: Path
) -> None:
    for name, width, height in (("desktop", 1280, 800), ("phone", 360, 740)):
        watched = Watched(browser, server.base)
        try:
            page = watched.page()
            page.set_viewport_size({"width": width, "height": height})
            page.goto(server.base + "/")
            expect(page.locator("#status")).to_have_text("Ready")
            greedy(page)
            ask(page, PROBLEM, budget="256")
            last_reply(page)
            ask(page, "What is 2 + 3 + 1?", budget="256")
            last_reply(page).locator("details.reasoning summary").click()  # the worked step shown
            _wait_rendered(page)
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(screenshots / f"tutor-{name}.png"))
            assert (screenshots / f"tutor-{name}.png").stat().st_size > 10_000
        finally:
            watched.close()


def test_light_and_dark_follow_the_device(browser: Browser, server: ServeProcess) -> None:
    colours = {}
    for scheme in ("light", "dark"):
        watched = Watched(browser, server.base, color_scheme=scheme)
        try:
            page = open_page(watched)
            colours[scheme] = page.evaluate("getComputedStyle(document.body).backgroundColor")
        finally:
            watched.close()
    assert colours["light"] != colours["dark"]


def _page_weight_tool() -> Any:
    """bench/page_weight.py, loaded from this checkout's file whichever copy of the package is installed."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "page_weight.py"
    spec = importlib.util.spec_from_file_location("page_weight_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_page_is_small_and_paints_soon_over_a_slow_link(server: ServeProcess, browser: Browser) -> None:
    tool = _page_weight_tool()
    result = tool.measure(server.base + "/", kbit=1000, latency_ms=100, runs=1, browser=browser)
    assert [f.path for f in result.files] == ["/", "/static/tutor.css", "/static/tutor.js"]
    assert result.total_bytes == sum(f.bytes for f in result.files) < 80_000  # plain files, no framework
    assert result.total_gzip_bytes < 24_000
    run = result.runs[0]
    assert 0 < run.first_paint_ms <= run.first_contentful_paint_ms <= run.load_ms < 5_000
    assert run.first_paint_ms >= 200  # the link really was slow: connection, page and stylesheet, 100 ms each
    assert result.total_gzip_bytes <= run.transferred_bytes < result.total_bytes
