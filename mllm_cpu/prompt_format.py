"""A model file's chat template and tokenization: the prompt text and token ids of a conversation.

A chat template is code that comes with the file, so it is checked when the file is validated
(text, not too long, valid Jinja as llama-cpp-python compiles it) and rendered as untrusted code:
in jinja2's immutable sandbox with llama-cpp-python's settings, with bounds on loop iterations
and calls, on the size of every value it computes and of its output, and on time. Past a bound
the error names the file's chat template and the bound.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from mllm_cpu.convert.gguf_header import GGUFHeader
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log, last_error

Message = dict[str, str]
_PLAIN_LABELS = {"user": "Question", "assistant": "Answer"}
"""Turn labels of the completion prompt used for files without a chat template (base models such as
MobileLLM v1): the system prompt as the first paragraph, then "Question: ..." and "Answer: ..." lines,
ending with "Answer:" for the reply; another role is labelled with its name."""

TEMPLATE_MAX_CHARS = 1 << 20
"""The longest chat template a file may carry (published templates are at most a few tens of KB;
the converter takes templates of up to 1 MiB)."""
TEMPLATE_STEPS = 1_000_000
"""Loop iterations and calls one rendering may make, summed over the whole template."""
TEMPLATE_SECONDS = 5.0
"""Time one rendering may take (a real template renders a conversation in milliseconds)."""
TEMPLATE_SIZE_MARGIN = 1 << 20
"""Characters the output (and any value) of a rendering may have beyond twice the messages' text."""
COUNTED_TOKENIZERS = frozenset({"gpt2", "llama"})
"""`tokenizer.ggml.model` values (BPE, SentencePiece) that drop no input text, so a text of N bytes
has at least N / (longest token) tokens; other tokenizers may drop whitespace or accents."""
_TEMPLATE_KEY_PREFIX = gguf_keys.CHAT_TEMPLATE + "."
"""Named templates (`tokenizer.chat_template.tool_use`), which llama-cpp-python compiles at load too."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_text(text: str, source: str) -> str:
    """`text` when it is valid Unicode; else one InputError line naming `source` and the first bad place.

    Python hands bytes that are not UTF-8 (in arguments, or stdin in some locales) on as
    surrogate escapes, and JSON can spell lone surrogates ("\\ud800"); neither can reach the tokenizer.
    """
    bad = _SURROGATE.search(text)
    if bad is None:
        return text
    code, place = ord(bad.group()), bad.start() + 1
    if 0xDC80 <= code <= 0xDCFF:
        raise InputError(f"{source}: not UTF-8 text (byte 0x{code - 0xDC00:02x} at character {place})")
    raise InputError(f"{source}: not valid Unicode text (a lone surrogate U+{code:04X} at character {place})")


def chat_template_keys(header: GGUFHeader) -> list[str]:
    """The file's chat template keys: `tokenizer.chat_template` and any named ones."""
    return [key for key in header.metadata if key == gguf_keys.CHAT_TEMPLATE or key.startswith(_TEMPLATE_KEY_PREFIX)]


def check_chat_templates(header: GGUFHeader) -> None:
    """InputError naming the file and key for a chat template that is not text, too long, or not valid Jinja.

    llama-cpp-python compiles every chat template of a file when it loads it, so this runs before
    llama.cpp sees the file (the file's validation calls it).
    """
    for key in chat_template_keys(header):
        _compile(header.get(key), f"{header.path}: {key}")


class PromptTooLong(InputError):
    """A prompt that does not fit the context: a fact about one problem, not about the run (a batch records it)."""


class PromptFormat:
    """Renders conversations by the file's chat template and tokenizes prompts as the runtime does.

    `llama` is a loaded `llama_cpp.Llama` (a vocabulary-only one is enough); or, with `vocab` (a
    llama.cpp `llama_vocab`), any object that keeps the model of that vocabulary loaded.
    """

    def __init__(self, header: GGUFHeader, llama: Any, vocab: Any = None) -> None:
        import llama_cpp

        self._owner = llama
        self._vocab = vocab if vocab is not None else llama._model.vocab
        self.path = header.path
        template = header.get(gguf_keys.CHAT_TEMPLATE)
        self._template = _compile(template, f"{self.path}: {gguf_keys.CHAT_TEMPLATE}") if template else None
        self.chat_template: str | None = template or None
        self.bos_text = self._token_text(header.get(gguf_keys.BOS_ID))
        self.eos_text = self._token_text(header.get(gguf_keys.EOS_ID))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))  # llama.cpp's reading (its key or default)
        self.stop_texts: tuple[str, ...] = (
            () if self.chat_template else tuple(f"\n{r}:" for r in _PLAIN_LABELS.values())
        )
        """Text that ends a reply: a next turn's label in the completion prompt of a file without a template."""
        self._counted = header.get(gguf_keys.TOKENIZER_MODEL) in COUNTED_TOKENIZERS
        self._longest_token: int | None = None

    def _token_text(self, token_id: Any) -> str:
        """A special token's text, as llama-cpp-python's `detokenize([token], special=True)` gives it."""
        if token_id is None:
            return ""
        import llama_cpp

        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            count = llama_cpp.llama_token_to_piece(self._vocab, int(token_id), buffer, size, 0, True)
            if 0 <= count <= size:
                break
            size = abs(count)
        piece = buffer.raw[:count]
        if int(token_id) == llama_cpp.llama_vocab_bos(self._vocab) and piece.startswith(b" "):
            piece = piece[1:]  # as llama-cpp-python drops the space of a leading BOS
        return piece.decode("utf-8", errors="replace")

    def render(self, messages: list[Message]) -> str:
        """The prompt text for a conversation, by the file's chat template (within the template bounds)."""
        if self._template is None:
            return _plain_prompt(messages)
        try:
            return _render(self._template, messages, self.eos_text, self.bos_text, f"{self.path}: the chat template")
        except (jinja2.TemplateError, ValueError) as error:  # llama-cpp-python's raise_exception raises ValueError
            if len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
                return self.render(_system_in_first_turn(messages))  # templates without a system role (gemma)
            raise InputError(f"the model's chat template failed: {_one_line(str(error))}") from None

    def longest_token_bytes(self) -> int:
        """The most bytes any token of the vocabulary stands for (its stored text; computed once, ~0.1 s)."""
        if self._longest_token is None:
            import llama_cpp

            count = llama_cpp.llama_vocab_n_tokens(self._vocab)
            self._longest_token = max(
                (len(llama_cpp.llama_vocab_get_text(self._vocab, token) or b"") for token in range(count)), default=1
            )
        return max(1, self._longest_token)

    def surely_longer(self, text: str, tokens: int) -> bool:
        """True when `text` has more than `tokens` tokens for certain, known without tokenizing it.

        Every token stands for at most `longest_token_bytes()` bytes of the text, and a character is
        at least one byte; only texts longer than `tokens` characters need the vocabulary's figure.
        """
        return self._counted and len(text) > tokens and len(text) > tokens * self.longest_token_bytes()

    def tokenize(self, text: str, limit: int | None = None) -> list[int]:
        """Token ids of a prompt; special tokens in the text are parsed, BOS added once.

        With `limit` (a context size), a text that surely has more tokens is refused before it is
        tokenized, so memory and time stay bounded by the context, not by the text.
        """
        if limit is not None and self.surely_longer(text, limit):
            raise PromptTooLong(
                f"the prompt has {len(text):,} characters, more than the {limit:,} tokens the context holds "
                f"(no token of this model stands for more than {self.longest_token_bytes()} bytes)"
            )
        data = unicode_text(text, "the prompt").encode("utf-8")
        add_bos = self.add_bos and not (self.bos_text and text.startswith(self.bos_text))
        return _tokenize(self._vocab, data, add_bos)

    def with_bos(self, text: str) -> str:
        """The prompt text with the BOS token written out where `tokenize` would add it."""
        if self.add_bos and self.bos_text and not text.startswith(self.bos_text):
            return self.bos_text + text
        return text


def load_vocabulary(header: GGUFHeader, n_ctx: int = 512) -> Any:
    """A vocabulary-only `llama_cpp.Llama` of a validated file, for rendering and counting prompts."""
    import llama_cpp

    with captured_llama_log() as log:
        try:
            return llama_cpp.Llama(str(header.path), vocab_only=True, n_ctx=n_ctx, verbose=False)
        except UnicodeDecodeError:
            raise special_tokens_not_utf8(header.path) from None
        except ValueError:
            raise InputError(f"llama.cpp could not load the vocabulary of {header.path}: {last_error(log)}") from None


def special_tokens_not_utf8(path: object) -> InputError:
    """The error for a file llama-cpp-python cannot load because its BOS or EOS token is not UTF-8 text."""
    return InputError(f"{path}: the BOS or EOS token is not UTF-8 text, which llama-cpp-python cannot load")


def _tokenize(vocab: Any, data: bytes, add_bos: bool) -> list[int]:
    """llama.cpp's tokenization of UTF-8 bytes into a buffer sized by the text (a token is at least a byte).

    llama-cpp-python's own `tokenize` allocates the model's whole trained context for every call.
    """
    import llama_cpp

    capacity = len(data) + 2
    while True:
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, capacity, add_bos, True)
        if count >= 0:
            return list(buffer[:count])
        if -count <= capacity:
            raise InputError(f"llama.cpp could not tokenize a prompt of {len(data):,} bytes")
        capacity = -count


def _plain_prompt(messages: list[Message]) -> str:
    """The completion prompt of a conversation for a base model (see `_PLAIN_LABELS`)."""
    parts = [
        f"{m['content']}\n\n"
        if m["role"] == "system"
        else f"{_PLAIN_LABELS.get(m['role'], m['role'])}: {m['content']}\n"
        for m in messages
    ]
    return f"{''.join(parts)}{_PLAIN_LABELS['assistant']}:"


def _system_in_first_turn(messages: list[Message]) -> list[Message]:
    """The system prompt moved into the first user turn, for templates that reject a system role."""
    system, first, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class TemplateLimit(InputError):
    """A rendering that went past one of the template bounds; the message names the template and the bound."""


class _Budget:
    """What one rendering may still spend: steps, time, and the size of any value or of the output."""

    def __init__(self, max_size: int, where: str) -> None:
        self.max_size = max_size
        self.where = where
        self.steps = 0
        self.deadline = time.monotonic() + TEMPLATE_SECONDS

    def fail(self, what: str) -> TemplateLimit:
        return TemplateLimit(f"{self.where} went past its bounds: {what}")

    def step(self) -> None:
        self.steps += 1
        if self.steps > TEMPLATE_STEPS:
            raise self.fail(f"more than {TEMPLATE_STEPS:,} loop iterations and calls")
        if self.steps % 256 == 0 and time.monotonic() > self.deadline:
            raise self.fail(f"rendering took more than {TEMPLATE_SECONDS:g} s")

    def check(self, value: Any) -> Any:
        """`value`, if its size (characters of text, items of collections, nested) is within the bound."""
        if _size(value, self.max_size) > self.max_size:
            raise self.fail(f"a value or output of more than {self.max_size:,} characters")
        return value

    def check_arguments(self, args: Iterable[Any]) -> None:
        """No number that would make a value past the bound (a width, a count, a repetition)."""
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > self.max_size:
                raise self.fail(f"the number {arg:,} as an argument (more than {self.max_size:,})")

    def check_operation(self, operator: str, left: Any, right: Any) -> None:
        """Refuse `left operator right` when its result would be past the bound (checked before computing)."""
        bound = self.max_size
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                is_repetition = isinstance(count, int) and not isinstance(sequence, (int, float))
                if is_repetition and _size(sequence, bound) * max(count, 0) > bound:
                    raise self.fail(f"a repetition of more than {bound:,} characters")
        is_power = operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1
        if is_power and left.bit_length() * right > bound:
            raise self.fail(f"a number of more than {bound:,} bits")
        if operator == "%" and isinstance(left, str):
            self.check_arguments(int(width) for width in re.findall(r"%[-#0 +]*(\d+)", left))

    def check_call(self, name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A call of a filter or function is a step; refused when its numbers or its result would be past the bound."""
        self.step()
        self.check_arguments([value, *args, *kwargs.values()])
        try:
            estimate = _expansion(name, value, args, kwargs, self.max_size)
        except (TypeError, ValueError):  # arguments the call itself will reject
            return
        if estimate > self.max_size:
            raise self.fail(f"{name.removeprefix('str.')}() making more than {self.max_size:,} characters")

    def items(self, iterable: Any) -> Iterator[Any]:
        """The items of a loop or an iterator, one step each, their sizes summed against the bound."""
        total = 0
        for item in iterable:
            self.step()
            total += _size(item, self.max_size)
            if total > self.max_size:
                raise self.fail(f"a sequence of more than {self.max_size:,} characters")
            yield item


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _size(value: Any, bound: int) -> int:
    """Characters of text plus items of collections in `value`, nested; counting stops past `bound`."""
    total, pending = 0, [value]
    while pending and total <= bound:
        item = pending.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, dict):
            total += len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            pending.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3
        else:
            total += 1
    return total


def _checked(value: Any) -> Any:
    """A value computed by the template, measured: iterators are wrapped so their items are."""
    budget = _BUDGET.get()
    if budget is None:
        return value
    if isinstance(value, Iterator):
        return budget.items(value)
    return budget.check(value)


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that is a step, with its arguments and result measured (jinja's pass_* markers are kept)."""
    passes_context = getattr(function, "jinja_pass_arg", None) is not None

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            first = 1 if passes_context else 0
            if name == "join" and len(args) > first and isinstance(args[first], Iterator):
                args = (*args[:first], list(args[first]), *args[first + 1 :])
            value, rest = (args[first], args[first + 1 :]) if len(args) > first else (None, ())
            budget.check_call(name, value, rest, kwargs)
        return _checked(function(*args, **kwargs))

    return bounded


def _expansion(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any], bound: int) -> int:
    """A bound on the size of the result of the filters and str methods (named "str.NAME") that can
    make much more than they are given (replace, join, indent, ...); 0 for the others."""

    def arg(index: int, key: str, default: Any = None) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    text = value if isinstance(value, str) else ""
    if name in ("replace", "str.replace"):
        old, new = str(arg(0, "old", "")), str(arg(1, "new", ""))
        return len(text) + (text.count(old) if old else len(text) + 1) * len(new)
    if name == "join":
        return _size(value, bound) + len(str(arg(0, "d", ""))) * len(value)
    if name == "str.join":
        items = arg(0, "iterable", ())
        return _size(items, bound) + len(text) * len(items)
    if name == "indent" and isinstance(arg(0, "width"), str):
        return len(text) + (text.count("\n") + 1) * len(arg(0, "width"))
    if name == "wordwrap":
        wrap = str(arg(2, "wrapstring") or "\n")
        return len(text) + (len(text) // max(int(arg(0, "width", 79)), 1) + 1) * len(wrap)
    if name == "str.expandtabs":
        return len(text) + text.count("\t") * max(int(arg(0, "tabsize", 8)), 0)
    if name == "str.translate" and isinstance(arg(0, "table"), dict):
        return len(text) * max([_size(v, bound) for v in arg(0, "table").values()] + [1])
    if name == "tojson":
        indent = arg(0, "indent")
        return _size(value, bound) * (2 + (len(indent) if isinstance(indent, str) else int(indent or 0)))
    if name == "urlize":
        return len(text) * (1 + sum(len(a) for a in (arg(2, "target"), arg(3, "rel")) if isinstance(a, str)))
    if name in ("format", "str.format", "str.format_map"):
        return max((int(width) for width in re.findall(r"\d+", text)), default=0)
    if name == "generate_lorem_ipsum":  # lipsum(n, html, min, max): n paragraphs of up to max words
        return int(arg(0, "n", 5)) * int(arg(3, "max", 100)) * 10
    return 0


@jinja2.pass_context
def _loop_items(context: Any, iterable: Any) -> Any:
    """What a `for` loop iterates, counted step by step."""
    budget = _BUDGET.get()
    return iterable if budget is None else budget.items(iterable)


@jinja2.pass_context
def _measured(context: Any, value: Any) -> Any:
    """A `~` concatenation's result, measured."""
    return _checked(value)


@jinja2.pass_context
def _output_value(context: Any, value: Any) -> Any:
    """Each `{{ ... }}` value, unchanged: a finalize that takes the context keeps jinja from
    evaluating output expressions at compile time, where no bound applies."""
    return value


class _BoundLoops(NodeTransformer):
    """Rewrites a parsed template so every loop iterates through `_loop_items` and every `~` is measured."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 (jinja's visitor naming)
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "mllm_loop_items", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Filter(node, "mllm_measured", [], [], None, None, lineno=node.lineno)


_SIZED_BINOPS = frozenset({"+", "*", "%", "**"})


class _IgnoreGenerationTags(Extension):
    """HuggingFace's `{% generation %}` tag, passed through as Jinja2ChatFormatter's extension does."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Jinja2ChatFormatter's (and transformers') `tojson` filter: non-ASCII text is kept as it is."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(pattern: str) -> str:
    """The `strftime_now` global templates may call, as Jinja2ChatFormatter passes it."""
    return datetime.now().strftime(pattern)


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """llama-cpp-python's chat-template environment (Jinja2ChatFormatter's settings) with the bounds.

    Its `generation` tag, `tojson` and `strftime_now` are written out here, so that validating a
    file's templates (`models`, `info`) needs no llama.cpp; tests compare renderings with it.
    """

    intercepted_binops = _SIZED_BINOPS

    def __init__(self) -> None:
        super().__init__(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, loopcontrols],
            optimized=False,  # no constant folding: a template's expressions are never evaluated at compile time
            finalize=_output_value,
        )
        self.filters["tojson"] = _tojson
        self.filters = {name: _bounded_filter(name, function) for name, function in self.filters.items()}
        self.filters["mllm_loop_items"] = _loop_items
        self.filters["mllm_measured"] = _measured

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's signature)
        """Calls (methods, macros, globals) are steps, with their number arguments and results measured."""
        budget = _BUDGET.get()
        if budget is not None:
            target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            owner = getattr(target, "__self__", None)
            name = getattr(target, "__name__", "")
            if isinstance(owner, str):
                if name == "join" and args and isinstance(args[0], Iterator):
                    args = (list(args[0]), *args[1:])
                budget.check_call(f"str.{name}", owner, args, kwargs)
            else:
                budget.check_call(name, None, args, kwargs)
        return _checked(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """`+`, `*`, `%` and `**`, refused before they would build a value past the bound."""
        budget = _BUDGET.get()
        if budget is not None:
            budget.check_operation(operator, left, right)
        return _checked(super().call_binop(context, operator, left, right))


@functools.lru_cache(maxsize=1)
def _environment() -> _BoundedEnvironment:
    return _BoundedEnvironment()


@functools.lru_cache(maxsize=16)
def _compile_text(text: str) -> jinja2.Template:
    environment = _environment()
    tree = _BoundLoops().visit(environment.parse(text))
    return environment.from_string(tree)


def _compile(template: Any, where: str) -> jinja2.Template:
    """The compiled template; InputError naming `where` when it is not text, too long or not valid Jinja."""
    if not isinstance(template, str):
        raise InputError(f"{where} is {type(template).__name__}, not text")
    if len(template) > TEMPLATE_MAX_CHARS:
        raise InputError(f"{where} has {len(template):,} characters, more than {TEMPLATE_MAX_CHARS:,} (the limit)")
    try:
        return _compile_text(template)
    except jinja2.TemplateSyntaxError as error:
        message = _one_line(error.message or "")
        raise InputError(f"{where} is not valid Jinja: {message} (line {error.lineno})") from None
    except (jinja2.TemplateError, RecursionError, MemoryError) as error:
        raise InputError(f"{where} cannot be compiled: {_one_line(str(error)) or type(error).__name__}") from None


def _render(template: jinja2.Template, messages: list[Message], eos: str, bos: str, where: str) -> str:
    """Render as llama-cpp-python's Jinja2ChatFormatter does, streamed and within the bounds."""

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    text_size = sum(len(str(value)) for message in messages for value in message.values())
    budget = _Budget(2 * text_size + TEMPLATE_SIZE_MARGIN, where)
    token = _BUDGET.set(budget)
    pieces: list[str] = []
    written = 0
    try:
        for piece in template.generate(
            messages=messages,
            eos_token=eos,
            bos_token=bos,
            raise_exception=raise_exception,
            add_generation_prompt=True,
            functions=None,
            function_call=None,
            tools=None,
            tool_choice=None,
            strftime_now=_strftime_now,
        ):
            written += len(piece)
            if written > budget.max_size:
                raise budget.fail(f"an output of more than {budget.max_size:,} characters")
            budget.step()
            pieces.append(piece)
    except (jinja2.TemplateError, ValueError, InputError):
        raise
    except RecursionError:
        raise budget.fail("recursion too deep") from None
    except Exception as error:  # the template's own code failed (a TypeError, a missing key, ...)
        raise InputError(f"{where} failed: {type(error).__name__}: {_one_line(str(error))}") from None
    finally:
        _BUDGET.reset(token)
    return "".join(pieces)
