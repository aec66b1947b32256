"""Grammars from requests, made safe for llama.cpp: parsed first in a child process, then applied
so that a dead end ends the reply instead of the process.

llama.cpp's grammar parser recurses once per nesting level (a deeply nested grammar overflows the
stack: SIGSEGV), and llama-cpp-python adds the sampler it returns to its chain without checking
it (a grammar llama.cpp rejects leaves a null sampler: SIGSEGV at the first token). So a grammar,
or the JSON schema llama-cpp-python would turn into one, is first converted and parsed by
`python -m mllm_cpu.grammar_check MODEL SOURCE` under a memory limit, a time limit and a smaller
stack than the server's threads have; the verdict is cached. A grammar that parses can still
reach a state no token of the vocabulary satisfies (an empty character class, a token id outside
the vocabulary), and llama.cpp aborts when its grammar sampler then accepts a token; so the
server never adds llama.cpp's grammar sampler to the chain: `token_sampler.GrammarConstraint` runs it as a
logits processor that masks the tokens the grammar rejects, accepts only tokens it allowed, and
ends the reply with an end-of-sequence token at a dead end.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mllm_cpu.core.child import module_command, run_child
from mllm_cpu.core.values import GIB, MIB

MAX_GRAMMAR_CHARS = 64 * 1024
"""The longest grammar taken, given or made from a JSON schema (llama.cpp's own JSON grammar has 600)."""
CHECK_SECONDS = 30.0
"""How long a grammar's check may take (starting Python and loading the vocabulary: about a second)."""
CHECK_MEMORY_BYTES = 2 * GIB
"""The address space of the checking process: a schema that would expand past it is refused."""
CHECK_STACK_BYTES = 2 * MIB
"""The stack the parse runs on in the child: below the server threads' (8 MiB by default), so a grammar
that parses there cannot overflow the server's stack."""
CACHED_VERDICTS = 256
"""Grammars whose verdict is kept (per served model)."""
GRAMMAR_ROOT = b"root"
"""The start symbol llama-cpp-python's LlamaGrammar uses."""
MAX_PROBLEM_CHARS = 300
"""The longest problem line reported (llama.cpp's message quotes the rest of the grammar)."""
_PARSER_ERROR = "error parsing grammar:"

Kind = Literal["gbnf", "json_schema"]


@dataclass(frozen=True)
class GrammarSource:
    """What a request constrains generation with: GBNF text, or a JSON schema (as JSON text) that
    llama-cpp-python turns into GBNF."""

    kind: Kind
    text: str

    def key(self) -> str:
        """The cache key of the source."""
        return hashlib.sha256(f"{self.kind}\0{self.text}".encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """A grammar's check: the problem (None when llama.cpp takes it), the key of the GBNF text it came
    to, and whether it holds for good (a check that ran out of time may pass on an idle machine)."""

    problem: str | None
    gbnf_key: str | None = None
    lasting: bool = True


class GrammarCheckFailed(RuntimeError):
    """The checking process itself failed (not the grammar): the request cannot be served now."""


class GrammarChecker:
    """Checks grammars against one model's vocabulary, one child process at a time, with a cache."""

    def __init__(self, model: Path) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._verdicts: OrderedDict[str, Verdict] = OrderedDict()

    def problem(self, source: GrammarSource) -> str | None:
        """Why llama.cpp cannot take the grammar (one line), or None; GrammarCheckFailed when the check failed."""
        key = source.key()
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is None:
                verdict = self._check(source)
                if not verdict.lasting:
                    return verdict.problem
                self._remember(key, verdict)
                if verdict.gbnf_key is not None:
                    self._remember(verdict.gbnf_key, Verdict(verdict.problem, verdict.gbnf_key))
            self._verdicts.move_to_end(key)
            return verdict.problem

    def _remember(self, key: str, verdict: Verdict) -> None:
        self._verdicts[key] = verdict
        while len(self._verdicts) > CACHED_VERDICTS:
            self._verdicts.popitem(last=False)

    def _check(self, source: GrammarSource) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="mllm-cpu-grammar-") as folder:
            path = Path(folder) / "source.json"
            path.write_text(json.dumps({"kind": source.kind, "text": source.text}), encoding="utf-8")
            result = run_child(
                module_command("mllm_cpu.grammar_check", str(self.model), str(path)), timeout=CHECK_SECONDS
            )
        if result.timed_out:
            return Verdict(f"the grammar was not checked in {CHECK_SECONDS:g} s", lasting=False)
        if result.returncode in (-signal.SIGINT, -signal.SIGTERM):
            raise GrammarCheckFailed("the grammar check was interrupted")
        if result.crashed:
            return Verdict(f"llama.cpp cannot parse this grammar: {result.crash_reason()}")
        try:
            report = json.loads(result.stdout.strip().splitlines()[-1])
            return Verdict(report["problem"], report["gbnf_key"])
        except (IndexError, ValueError, KeyError, TypeError):
            raise GrammarCheckFailed(f"the grammar check failed (exit {result.returncode})") from None


def gbnf_text(source: GrammarSource) -> str:
    """The GBNF text llama-cpp-python generates with: the text itself, or the grammar it makes from the
    schema (its JSON grammar when the conversion fails, as `LlamaGrammar.from_json_schema`'s callers do)."""
    if source.kind == "gbnf":
        return source.text
    from llama_cpp import llama_grammar

    try:
        return llama_grammar.json_schema_to_gbnf(source.text)
    except MemoryError:
        raise
    except Exception:
        return llama_grammar.JSON_GBNF


def _parse_problem(vocab: Any, text: str) -> str | None:
    """Parse the grammar with llama.cpp on a thread with CHECK_STACK_BYTES of stack; its error line, or None.

    llama.cpp's parser prints its error ("parse: error parsing grammar: expecting ')' at ...") on
    stderr, not to its log: stderr goes to a file while it runs.
    """
    import llama_cpp

    from mllm_cpu.core.llama_log import captured_llama_log, last_error

    parsed: list[bool] = []

    def parse() -> None:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), GRAMMAR_ROOT)
        parsed.append(bool(sampler))
        if sampler:
            llama_cpp.llama_sampler_free(sampler)

    with tempfile.TemporaryFile() as printed, captured_llama_log() as lines:
        saved = os.dup(2)
        os.dup2(printed.fileno(), 2)
        try:
            threading.stack_size(CHECK_STACK_BYTES)
            worker = threading.Thread(target=parse)
            worker.start()
            worker.join()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        printed.seek(0)
        errors = [line for line in printed.read().decode("utf-8", "replace").splitlines() if _PARSER_ERROR in line]
    if parsed[0]:
        return None
    detail = errors[0].split(_PARSER_ERROR, 1)[1].strip() if errors else last_error(lines)
    return f"llama.cpp cannot parse this grammar: {detail}"[:MAX_PROBLEM_CHARS]


def _check_in_child(model: str, source_file: str) -> dict[str, str | None]:
    """The child's verdict on a source: {"problem": ..., "gbnf_key": ...}."""
    resource.setrlimit(resource.RLIMIT_AS, (CHECK_MEMORY_BYTES, CHECK_MEMORY_BYTES))
    document = json.loads(Path(source_file).read_text(encoding="utf-8"))
    source = GrammarSource(document["kind"], document["text"])
    try:
        text = gbnf_text(source)
    except MemoryError:
        return {"problem": "the grammar made from this JSON schema is too large", "gbnf_key": None}
    gbnf_key = GrammarSource("gbnf", text).key()
    if len(text) > MAX_GRAMMAR_CHARS:
        problem = f"the grammar has {len(text)} characters; the most is {MAX_GRAMMAR_CHARS}"
        return {"problem": problem, "gbnf_key": gbnf_key}
    import llama_cpp

    from mllm_cpu.core.llama_log import captured_llama_log

    with captured_llama_log():
        vocab = llama_cpp.Llama(model, vocab_only=True, verbose=False)
    return {"problem": _parse_problem(vocab._model.vocab, text), "gbnf_key": gbnf_key}


if __name__ == "__main__":
    print(json.dumps(_check_in_child(sys.argv[1], sys.argv[2])))
