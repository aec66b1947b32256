"""Model text as safe HTML for the tutor page: markdown, LaTeX as MathML, code highlighted, then sanitised.

A model's reply is untrusted text. `render_html` turns it into HTML in three steps:

1. markdown-it-py (CommonMark, raw HTML off, images off) parses the markdown, with two rules of ours
   that take math out before markdown can touch it: inline `\\( \\)`, `$ $`, `$$ $$`, `\\[ \\]` and a
   bare `\\boxed{...}`; and display blocks (`$$`, `\\[`, `\\begin{env}` at the start of a line up to
   their closing). Math that is not closed (yet, while a reply streams) stays text.
2. Each math span is converted by latex2mathml, bounded: at most `MAX_MATH_CHARS` characters and
   `MAX_BRACE_DEPTH` levels of braces, at most `MAX_MATH_SPANS` spans and `MATH_SECONDS` for all of
   them; a span past a bound, or that latex2mathml rejects (any exception), is shown as its text.
   Fenced code with a known language is highlighted by pygments (at most `MAX_HIGHLIGHT_CHARS`).
3. nh3 (ammonia) keeps only the tags and attributes of `ALLOWED_TAGS` / `ALLOWED_ATTRIBUTES`:
   no script, style, image, form or event handler survives, and links keep http, https and mailto.

`final_answer` renders the answer `solve` grades (the last closed box, as `answers.extract_boxed` finds
it) as display math, the answer the page shows apart. Everything here is pure Python and runs in well
under a second for the largest text the server takes (`MAX_RENDER_CHARS`).
"""

from __future__ import annotations

import functools
import html
import re
import threading
import time
from collections import OrderedDict
from typing import Any

from mllm_cpu.answers import closing_brace, extract_boxed
from mllm_cpu.tasks import PRESETS

MAX_RENDER_CHARS = 200_000
"""The longest text one render request may give (about a 32k-token reply)."""
MAX_MATH_CHARS = 4_000
"""The longest math span converted; a longer one is shown as text."""
MAX_BRACE_DEPTH = 40
"""The deepest nesting of braces in a math span converted (latex2mathml recurses per level)."""
MAX_MATH_SPANS = 2_000
"""The most math spans converted in one text; the rest are shown as text."""
RENDER_SECONDS = 1.0
"""The time one text's rendering may take; the blocks and math spans after it are shown as text."""
MAX_BLOCK_CHARS = 10_000
"""The longest block (text between blank lines) rendered as markdown; a longer line is shown plain."""
MAX_CACHE_CHARS = 8_000_000
"""The most text (blocks and their HTML) the cache of rendered blocks keeps."""
MAX_BOXED_CHARS = 1_000
"""The longest bare `\\boxed{...}` (outside math delimiters) taken as math."""
MAX_HIGHLIGHT_CHARS = 20_000
"""The longest code block highlighted; a longer one is shown plain."""
MAX_BLOCK_LINES = 400
"""The most lines a display-math block may span."""

HIGHLIGHTED = {
    "python": "python",
    "py": "python",
    "python3": "python",
    "cpp": "cpp",
    "c++": "cpp",
    "cc": "cpp",
    "c": "c",
    "java": "java",
    "javascript": "javascript",
    "js": "javascript",
    "bash": "bash",
    "sh": "bash",
    "json": "json",
}
"""Fence tags highlighted, and the pygments lexer of each."""
TOKEN_CLASS_PREFIX = "tok-"
"""The prefix of pygments' token classes in the HTML (`tok-k` a keyword, `tok-s2` a string, ...)."""

MATHML_TAGS = {
    "math",
    "semantics",
    "annotation",
    "mrow",
    "mi",
    "mn",
    "mo",
    "ms",
    "mtext",
    "mspace",
    "mfrac",
    "msqrt",
    "mroot",
    "mstyle",
    "merror",
    "mpadded",
    "mphantom",
    "msub",
    "msup",
    "msubsup",
    "munder",
    "mover",
    "munderover",
    "mmultiscripts",
    "mprescripts",
    "none",
    "mtable",
    "mtr",
    "mtd",
    "menclose",
}
HTML_TAGS = {
    "p",
    "br",
    "hr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "strong",
    "em",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "a",
    "span",
    "div",
}
ALLOWED_TAGS = HTML_TAGS | MATHML_TAGS
"""Every tag the rendered HTML may hold."""
_MATHML_ATTRIBUTES = {
    "display",
    "displaystyle",
    "scriptlevel",
    "mathvariant",
    "stretchy",
    "fence",
    "form",
    "separator",
    "lspace",
    "rspace",
    "largeop",
    "movablelimits",
    "symmetric",
    "minsize",
    "maxsize",
    "accent",
    "accentunder",
    "linethickness",
    "width",
    "height",
    "depth",
    "voffset",
    "columnalign",
    "rowalign",
    "columnspacing",
    "rowspacing",
    "columnspan",
    "rowspan",
    "columnlines",
    "rowlines",
    "frame",
    "linebreak",
    "notation",
}
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    **{tag: set(_MATHML_ATTRIBUTES) for tag in MATHML_TAGS},
    "mrow": {*_MATHML_ATTRIBUTES, "class"},
    "a": {"href", "title"},
    "ol": {"start"},
    "code": {"class"},
    "pre": {"class"},
    "span": {"class", "title"},
    "div": {"class"},
    "p": {"class"},
}
"""The attributes each tag may keep (none carries script, style or a URL but `a href`)."""
URL_SCHEMES = {"http", "https", "mailto"}

_BEGIN = re.compile(r"\\begin\{([a-zA-Z]+\*?)\}")
_DOLLAR_CLOSE = re.compile(r"(?<![\s\\])\$(?!\d)")
_REDRAWN = re.compile(r"\\begin\{(aligned|align|eqnarray\*?)\}(.*?)\\end\{\1\}", re.DOTALL)
"""Environments latex2mathml draws badly (or numbers), drawn as align* instead: aligned at &, no numbers."""


def render_reply(text: str, task: str | None) -> dict[str, str | None]:
    """What /extras/render answers: `html`, the text rendered, and `answer`, the last box's content as
    display MathML (None for a code task, or when no box is closed)."""
    preset = PRESETS.get(task) if task else None
    boxed = preset is None or preset.answer_kind == "boxed"
    return {"html": render_html(text), "answer": final_answer(text) if boxed else None}


def render_html(text: str) -> str:
    """`text` (markdown with LaTeX) as sanitised HTML; math as MathML, code highlighted.

    The text is rendered in blocks (`_blocks`), each cached: a streamed reply is rendered again every
    quarter second and only its last block changes. Once RENDER_SECONDS have gone, the remaining
    blocks are shown as plain text.
    """
    budget = _Budget()
    parts: list[str] = []
    for block in _blocks(text[:MAX_RENDER_CHARS]):
        if time.monotonic() >= budget.deadline:
            parts.append(_plain(block))
            continue
        parts.append(_render_block(block, budget))
    return "".join(parts)


def final_answer(text: str) -> str | None:
    """The answer `solve` grades (`answers.extract_boxed`: the last closed, non-empty `\\boxed{...}`,
    `\\fbox{...}` or `\\boxed 5`) as sanitised display MathML, or its text when it is not valid LaTeX
    or longer than `MAX_MATH_CHARS`; None when there is none."""
    content = extract_boxed(text)
    return None if content is None else sanitise(_math_html(content, display=True, budget=_Budget()))


def sanitise(markup: str) -> str:
    """`markup` with only the allowed tags, attributes and URL schemes (script and style with their text
    removed)."""
    import nh3

    return nh3.clean(
        markup,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


class _Budget:
    """What is left for rendering one text: math spans, and time."""

    def __init__(self) -> None:
        self.spans = MAX_MATH_SPANS
        self.deadline = time.monotonic() + RENDER_SECONDS
        self.spent = False
        """Whether some span was shown as text for want of budget (its block is then not cached)."""

    def take(self) -> bool:
        """Whether one more span may be converted."""
        self.spans -= 1
        allowed = self.spans >= 0 and time.monotonic() < self.deadline
        self.spent = self.spent or not allowed
        return allowed


class _BlockCache:
    """Rendered blocks by their text, the least recently used dropped past MAX_CACHE_CHARS; thread-safe."""

    def __init__(self) -> None:
        self._blocks: OrderedDict[str, str] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, block: str) -> str | None:
        with self._lock:
            found = self._blocks.get(block)
            if found is not None:
                self._blocks.move_to_end(block)
            return found

    def put(self, block: str, rendered: str) -> None:
        with self._lock:
            if block in self._blocks:
                return
            self._blocks[block] = rendered
            self._size += len(block) + len(rendered)
            while self._size > MAX_CACHE_CHARS and self._blocks:
                old, old_rendered = self._blocks.popitem(last=False)
                self._size -= len(old) + len(old_rendered)


_CACHE = _BlockCache()


def _render_block(block: str, budget: _Budget) -> str:
    """One block as sanitised HTML, from the cache when rendered before with the whole budget."""
    cached = _CACHE.get(block)
    if cached is not None:
        return cached
    spent = budget.spent
    budget.spent = False
    too_long = len(block) > MAX_BLOCK_CHARS
    rendered = _plain(block) if too_long else sanitise(_markdown().render(block, {"math": budget}))
    if not budget.spent:
        _CACHE.put(block, rendered)
    budget.spent = budget.spent or spent
    return rendered


def _plain(block: str) -> str:
    """A block shown as its text (line breaks kept by the page's CSS)."""
    return f'<p class="plain">{html.escape(block)}</p>\n'


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def _blocks(text: str) -> list[str]:
    """`text` cut at blank lines outside fenced code (each block ends with its newlines), blocks longer
    than MAX_BLOCK_CHARS cut again at line ends; a single longer line stays one block (shown plain)."""
    blocks: list[str] = []
    current: list[str] = []
    size = 0
    fence = ""
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        opening = _FENCE.match(line)
        if fence:
            closes = opening and opening[1][0] == fence[0] and len(opening[1]) >= len(fence)
            if closes and opening and not line[opening.end() :].strip():
                fence = ""
        elif opening and not (opening[1][0] == "`" and "`" in line[opening.end() :]):
            fence = opening[1]
        if current and size + len(line) > MAX_BLOCK_CHARS:
            blocks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
        if not stripped and not fence:
            blocks.append("".join(current))
            current, size = [], 0
    if current:
        blocks.append("".join(current))
    return blocks


@functools.cache
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False, "highlight": _highlight, "maxNesting": 20})
    parser.enable("table").enable("strikethrough")
    parser.disable("image")
    parser.inline.ruler.before("escape", "math_inline", _math_inline_rule)
    parser.block.ruler.before(
        "fence", "math_block", _math_block_rule, {"alt": ["paragraph", "reference", "blockquote", "list"]}
    )
    parser.add_render_rule("math_inline", _render_math_inline)
    parser.add_render_rule("math_block", _render_math_block)
    parser.add_render_rule("math_text", _render_math_text)
    return parser


def _render_math_inline(self: Any, tokens: list[Any], index: int, options: Any, env: dict[str, Any]) -> str:
    token = tokens[index]
    return _math_html(token.content, token.info == "display", env["math"], token.markup, wrapper="span")


def _render_math_block(self: Any, tokens: list[Any], index: int, options: Any, env: dict[str, Any]) -> str:
    token = tokens[index]
    return _math_html(token.content, True, env["math"], token.markup) + "\n"


def _render_math_text(self: Any, tokens: list[Any], index: int, options: Any, env: dict[str, Any]) -> str:
    return html.escape(tokens[index].content)


def _math_html(latex: str, display: bool, budget: _Budget, source: str | None = None, wrapper: str = "div") -> str:
    """MathML for `latex` (display math inside a `wrapper` of class math-block); its escaped `source` text
    when it is empty, too long or too deep, past the budget, or not LaTeX latex2mathml can read."""
    shown = latex if source is None else source
    if not latex.strip() or len(latex) > MAX_MATH_CHARS or not budget.take() or _brace_depth(latex) > MAX_BRACE_DEPTH:
        return _as_text(shown, display, wrapper)
    mathml = _convert(latex, display)
    if mathml is None:
        return _as_text(shown, display, wrapper)
    return f'<{wrapper} class="math-block">{mathml}</{wrapper}>' if display else mathml


def _as_text(source: str, display: bool, wrapper: str) -> str:
    tag = wrapper if display else "span"
    return f'<{tag} class="math-text">{html.escape(source)}</{tag}>'


@functools.lru_cache(maxsize=4096)
def _convert(latex: str, display: bool) -> str | None:
    """latex2mathml's MathML for `latex`, boxes drawn by CSS (MathML Core has no menclose), None on failure.
    Cached: a streamed reply is rendered again and again with the same spans."""
    from latex2mathml.converter import convert

    latex = _REDRAWN.sub(lambda m: f"\\begin{{align*}}{m[2]}\\end{{align*}}", latex)
    try:
        mathml = convert(latex, display="block" if display else "inline")
    except Exception:  # latex2mathml raises many kinds (and RecursionError) on text that is not its LaTeX
        return None
    mathml = mathml.replace('<menclose notation="box">', '<mrow class="boxed">')
    return mathml.replace("</menclose>", "</mrow>")


_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)


def _brace_depth(latex: str) -> int:
    """The deepest nesting of braces in `latex` (escaped braces not counted)."""
    depth = deepest = 0
    for match in _BRACE_OR_ESCAPE.finditer(latex):
        if match[0] == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif match[0] == "}":
            depth = max(0, depth - 1)
    return deepest


def _math_inline_rule(state: Any, silent: bool) -> bool:
    """Inline math at the position: `\\(..\\)`, `\\[..\\]`, `$$..$$`, `$..$` (pandoc's rule: no space inside
    the dollars, no digit after the closing one) or a bare `\\boxed{..}`; an unclosed `\\(` or `\\[` is text."""
    src, pos, maximum = state.src, state.pos, state.posMax
    found = _inline_math_at(src, pos, maximum)
    if found is None:
        if src.startswith(("\\(", "\\["), pos):  # unclosed: keep the backslash, not markdown's escape
            if not silent:
                token = state.push("math_text", "", 0)
                token.content = src[pos : pos + 2]
            state.pos = pos + 2
            return True
        return False
    content, end, display = found
    if not silent:
        token = state.push("math_inline", "math", 0)
        token.content = content
        token.markup = src[pos:end]
        token.info = "display" if display else ""
    state.pos = end
    return True


def _inline_math_at(src: str, pos: int, maximum: int) -> tuple[str, int, bool] | None:
    """(latex, end, display) of the math span starting at `pos`, None when none does."""
    maximum = min(maximum, pos + MAX_MATH_CHARS + 16)  # a longer span is text: no need to look further
    for opening, closing, display in (("\\(", "\\)", False), ("\\[", "\\]", True), ("$$", "$$", True)):
        if src.startswith(opening, pos):
            close = src.find(closing, pos + 2, maximum)
            if close < 0:
                return None
            return src[pos + 2 : close], close + 2, display
    if src.startswith("\\boxed{", pos):
        brace = closing_brace(src, pos + len("\\boxed"), min(maximum, pos + MAX_BOXED_CHARS))
        return None if brace is None else (src[pos : brace + 1], brace + 1, False)
    if src.startswith("\\begin{", pos):
        match = _BEGIN.match(src, pos)
        if match is None:
            return None
        ending = f"\\end{{{match[1]}}}"
        close = src.find(ending, match.end(), maximum)
        return None if close < 0 else (src[pos : close + len(ending)], close + len(ending), True)
    if src.startswith("$", pos) and pos + 1 < maximum and not src[pos + 1].isspace():
        close_match = _DOLLAR_CLOSE.search(src, pos + 1, maximum)
        if close_match is None or "\n\n" in src[pos : close_match.start()]:
            return None
        return src[pos + 1 : close_match.start()], close_match.end(), False
    return None


_BLOCK_OPENINGS = (("$$", "$$"), ("\\[", "\\]"))


def _math_block_rule(state: Any, start_line: int, end_line: int, silent: bool) -> bool:
    """Display math opening a line (`$$`, `\\[` or `\\begin{env}`) up to its first closing, which must end a
    line, at most MAX_BLOCK_LINES on with no blank line between; not a block otherwise (unclosed while a
    reply streams: a paragraph, until the closing comes)."""
    if state.sCount[start_line] - state.blkIndent >= 4:
        return False
    src = state.src
    begin = state.bMarks[start_line] + state.tShift[start_line]
    opening = closing = ""
    for open_mark, close_mark in _BLOCK_OPENINGS:
        if src.startswith(open_mark, begin):
            opening, closing = open_mark, close_mark
            break
    else:
        match = _BEGIN.match(src, begin, state.eMarks[start_line])
        if match is None:
            return False
        closing = f"\\end{{{match[1]}}}"
    search_from = begin + len(opening) if opening else begin
    for line in range(start_line, min(end_line, start_line + MAX_BLOCK_LINES)):
        line_start = state.bMarks[line] + state.tShift[line]
        line_end = state.eMarks[line]
        if line > start_line and line_start >= line_end:  # a blank line: not closed
            return False
        close = src.find(closing, max(search_from, line_start), line_end)
        if close < 0:
            continue
        if src[close + len(closing) : line_end].strip():  # text after the closing: inline math
            return False
        if silent:
            return True
        token = state.push("math_block", "math", 0)
        token.block = True
        token.content = src[begin + len(opening) : close] if opening else src[begin : close + len(closing)]
        token.markup = src[begin : close + len(closing)]
        token.map = [start_line, line + 1]
        state.line = line + 1
        return True
    return False


def _highlight(code: str, language: str, attributes: str) -> str:
    """Pygments' HTML for a fenced block of a known language (token classes `tok-*`), "" otherwise (plain)."""
    lexer_name = HIGHLIGHTED.get(language.strip().lower())
    if lexer_name is None or len(code) > MAX_HIGHLIGHT_CHARS:
        return ""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name

    try:
        return str(
            highlight(code, get_lexer_by_name(lexer_name), HtmlFormatter(nowrap=True, classprefix=TOKEN_CLASS_PREFIX))
        )
    except Exception:  # a lexer failing on odd input: show the code plain
        return ""
