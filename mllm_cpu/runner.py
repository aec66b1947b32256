"""The batched engine in a process of its own: a crash in llama.cpp ends the runner, not its user.

`Runner` starts `python -m mllm_cpu.runner` (the installed package, `core.child.module_command`),
which loads a `BatchedEngine` and serves it over a socket pair: JSON lines, one per message.
The parent sends `submit` (a `BatchRequest`) and `cancel`; the child answers `ready` once the
model is loaded, then the events of each sequence (`piece`, `finished`, `failed`, or `refused`
for a request the engine would not take). The child ignores SIGINT (the parent decides what
Ctrl-C does) and dies with its parent (PR_SET_PDEATHSIG).

When the child dies (a SIGSEGV, an assert in llama.cpp), every sequence in flight gets a
`Failed` event naming what ended it (llama.cpp's assert when it printed one, else the signal),
the log callback hears it in one line, and a new child is started: later requests are
served. `RunnerPool` holds one runner at a time for several models, swapping when a request
names another model and the current one has nothing in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from mllm_cpu.batched import BatchedEngine, BatchRequest, Event, Failed, Finished, Piece, Stream
from mllm_cpu.budget import BudgetedGeneration, ThinkingBudget
from mllm_cpu.core.child import ChildResult, die_with_parent, module_command
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Generation, PromptTooLong, StopReason
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.tasks import get_preset

START_SECONDS = 600.0
"""How long loading the model in a runner may take (a large file on a slow board)."""
STOP_SECONDS = 10.0
"""How long a runner may take to exit once its socket is closed, before it is killed."""
STDERR_TAIL = 64 * 1024
"""The bytes of a runner's stderr kept to tell why it ended."""

Log = Callable[[str], None]


class RunnerUnavailable(Exception):
    """The runner could not be started again; the message says why."""


@dataclass(frozen=True)
class RunnerSpec:
    """What a runner loads: the model file, sequences decoded together, context per sequence, threads."""

    path: Path
    parallel: int
    n_ctx: int | None = None
    threads: int | None = None


# messages


def request_message(request: BatchRequest) -> dict[str, Any]:
    """A BatchRequest as JSON (the task preset by name)."""
    options = asdict(request.options)
    options["logit_bias"] = {str(token): bias for token, bias in request.options.logit_bias.items()}
    return {
        "tokens": list(request.tokens),
        "options": options,
        "stop": list(request.stop_texts),
        "budget": [request.budget.tokens, request.budget.answer_tokens] if request.budget else None,
        "task": request.preset.name if request.preset else None,
        "grammar": request.grammar,
    }


def request_from(message: dict[str, Any]) -> BatchRequest:
    options = dict(message["options"])
    options["logit_bias"] = {int(token): float(bias) for token, bias in options["logit_bias"].items()}
    budget = message["budget"]
    return BatchRequest(
        tokens=[int(token) for token in message["tokens"]],
        options=SamplingOptions(**options),
        stop_texts=tuple(message["stop"]),
        budget=ThinkingBudget(*budget) if budget else None,
        preset=get_preset(message["task"]) if message["task"] else None,
        grammar=message["grammar"],
    )


def event_message(event: Event) -> dict[str, Any]:
    """An engine event as JSON."""
    if isinstance(event, Piece):
        return {"piece": event.text, "token": event.token}
    if isinstance(event, Failed):
        return {"failed": event.reason}
    generation = asdict(event.generation)
    generation["stop_reason"] = event.generation.stop_reason.value
    budgeted = event.budgeted
    split = [budgeted.forced, budgeted.reasoning_tokens, budgeted.answer_tokens] if budgeted else None
    return {"finished": generation, "budgeted": split, "stop_token": event.stop_token}


def event_from(message: dict[str, Any]) -> Event:
    if "piece" in message:
        return Piece(message["piece"], message["token"])
    if "failed" in message:
        return Failed(message["failed"])
    fields = dict(message["finished"])
    fields["stop_reason"] = StopReason(fields["stop_reason"])
    generation = Generation(**fields)
    split = message["budgeted"]
    budgeted = BudgetedGeneration(generation, *split) if split else None
    return Finished(generation, budgeted, message["stop_token"])


class _Channel:
    """JSON lines over a socket; `send` may be called from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lines = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
        with self._lock:
            self.sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """The next message; None at the end (the other side closed or died)."""
        line = self.lines.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.lines.close()
        self.sock.close()


# the child side


def _child(arguments: list[str]) -> int:
    """Serve a BatchedEngine over the socket numbered `fd` until the parent closes it."""
    fd, parent, path, parallel, n_ctx, threads = arguments
    die_with_parent(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _Channel(socket.socket(fileno=int(fd)))
    try:
        engine = BatchedEngine(
            Path(path), parallel=int(parallel), n_ctx=int(n_ctx) or None, threads=int(threads) or None
        )
    except InputError as error:
        channel.send({"error": str(error)})
        return 2
    channel.send({"ready": {"pid": os.getpid(), "parallel": engine.parallel, "n_ctx": engine.n_ctx}})
    streams: dict[int, Stream] = {}

    def forward(number: int, stream: Stream) -> None:
        try:
            for event in stream:
                channel.send({"id": number, **event_message(event)})
        except OSError:  # the parent went away
            stream.cancel()
        finally:
            streams.pop(number, None)

    while True:
        message = channel.receive()
        if message is None:
            break
        number = message["id"]
        if message["op"] == "cancel":
            stream = streams.get(number)
            if stream is not None:
                stream.cancel()
            continue
        try:
            stream = engine.submit(request_from(message["request"]))
        except InputError as error:
            channel.send({"id": number, "refused": str(error), "too_long": isinstance(error, PromptTooLong)})
            continue
        streams[number] = stream
        threading.Thread(target=forward, args=(number, stream), daemon=True).start()
    engine.close()
    return 0


# the parent side


class RunnerStream:
    """The events of one sequence in a runner, as `batched.Stream` gives them; `close()` cancels an
    unfinished sequence (call it when the reader stops reading)."""

    def __init__(self, runner: Runner, number: int) -> None:
        self._runner = runner
        self.number = number
        self._events: queue.SimpleQueue[Event | InputError] = queue.SimpleQueue()
        self._wake: Callable[[], None] | None = None
        self.done = False

    def deliver(self, event: Event | InputError) -> None:
        self._events.put(event)
        wake = self._wake
        if wake is not None:
            wake()

    def __iter__(self) -> Iterator[Event]:
        while not self.done:
            event = self._events.get()
            if isinstance(event, InputError):
                self.done = True
                raise event
            if not isinstance(event, Piece):
                self.done = True
            yield event

    async def events(self) -> AsyncIterator[Event]:
        """The events, as `__iter__` gives them, for an asyncio event loop (no thread waits for them)."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(ready.set)

        self._wake = wake
        while not self.done:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                await ready.wait()
                ready.clear()
                continue
            if isinstance(event, InputError):
                self.done = True
                raise event
            if not isinstance(event, Piece):
                self.done = True
            yield event

    def cancel(self) -> None:
        """Ask the runner to end the sequence (it finishes as "interrupted")."""
        if not self.done:
            self._runner.cancel(self.number)

    def close(self) -> None:
        """Stop reading: cancel the sequence if it has not finished."""
        self.cancel()
        self.done = True


class Runner:
    """A BatchedEngine in a child process, started again when it dies (see the module's docstring)."""

    def __init__(self, spec: RunnerSpec, name: str, log: Log) -> None:
        self.spec = spec
        self.name = name
        self._log = log
        self._condition = threading.Condition()
        self._channel: _Channel | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._streams: dict[int, RunnerStream] = {}
        self._next = 0
        self._closing = False
        self._starting = False
        self._broken: str | None = None
        self.pid: int | None = None
        self.parallel = spec.parallel
        self.n_ctx: int | None = spec.n_ctx
        self.restarts = 0

    def start(self) -> None:
        """Start the child and wait until its model is loaded; InputError when it cannot load it.

        Children are started by one thread that lives as long as the runner: Linux's parent-death
        signal follows the thread that started a child, not the process.
        """
        with self._condition:
            self._starting = True
        threading.Thread(target=self._supervise, name=f"runner-{self.name}", daemon=True).start()
        with self._condition:
            self._condition.wait_for(lambda: not self._starting)
            if self._channel is None:
                raise InputError(self._broken or f"the model runner of {self.name} did not start")

    def _supervise(self) -> None:
        """Start the child, relay its messages until it ends, then (unless closing) start it again."""
        first = True
        while True:
            try:
                channel, process, tail = self._spawn()
            except InputError as error:
                with self._condition:
                    self._broken = str(error)
                    self._starting = False
                    self._condition.notify_all()
                if not first:
                    self._log(f"the model runner of {self.name} could not start again: {error}")
                return
            with self._condition:
                self._channel, self._process = channel, process
                self._starting = False
                self._condition.notify_all()
            if not first:
                self.restarts += 1
                self._log(f"the model runner of {self.name} is running again (PID {self.pid})")
            first = False
            if not self._relay(channel, process, tail):
                return

    def _spawn(self) -> tuple[_Channel, subprocess.Popen[bytes], deque[bytes]]:
        """A started child whose model is loaded; InputError when it could not load it."""
        spec = self.spec
        ours, theirs = socket.socketpair()
        command = module_command(
            "mllm_cpu.runner",
            str(theirs.fileno()),
            str(os.getpid()),
            str(spec.path),
            str(spec.parallel),
            str(spec.n_ctx or 0),
            str(spec.threads or 0),
        )
        process = subprocess.Popen(
            command,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "GGML_NO_BACKTRACE": "1"},
        )
        theirs.close()
        tail: deque[bytes] = deque()
        assert process.stderr is not None
        threading.Thread(target=_keep_tail, args=(process.stderr, tail), daemon=True).start()
        channel = _Channel(ours)
        ours.settimeout(START_SECONDS)
        try:
            first = channel.receive()
        except (OSError, ValueError):
            first = None
        ours.settimeout(None)
        if first is None or "ready" not in first:
            channel.close()
            if first is not None and "error" in first:
                process.wait()
                raise InputError(first["error"])
            process.kill()
            returncode = process.wait()
            reason = _ending(returncode, tail)
            raise InputError(f"{spec.path}: the model runner {reason} while loading the model")
        ready = first["ready"]
        self.pid, self.parallel, self.n_ctx = ready["pid"], ready["parallel"], ready["n_ctx"]
        return channel, process, tail

    def _relay(self, channel: _Channel, process: subprocess.Popen[bytes], tail: deque[bytes]) -> bool:
        """Hand each message to its stream until the child ends; then fail what was in flight.
        True when the child is to be started again (it died), False when the runner is closing."""
        while True:
            try:
                message = channel.receive()
            except (OSError, ValueError):
                message = None
            if message is None:
                break
            with self._condition:
                stream = self._streams.get(message["id"])
                if stream is None:
                    continue
                if "refused" in message:
                    error = PromptTooLong if message["too_long"] else InputError
                    event: Event | InputError = error(message["refused"])
                else:
                    event = event_from(message)
                if not isinstance(event, Piece):
                    del self._streams[message["id"]]
                    self._condition.notify_all()
            stream.deliver(event)
        returncode = process.wait()
        channel.close()
        with self._condition:
            in_flight = list(self._streams.values())
            self._streams.clear()
            self._channel = self._process = None
            closing = self._closing
            self._starting = not closing
            self._condition.notify_all()
        if closing:
            for stream in in_flight:
                stream.deliver(Failed("the server is shutting down"))
            return False
        reason = _ending(returncode, tail)
        for stream in in_flight:
            stream.deliver(Failed(f"the model runner crashed ({reason}); the reply is incomplete"))
        self._log(
            f"the model runner of {self.name} (PID {process.pid}) {reason}; "
            f"{len(in_flight)} request(s) in flight ended with an error; starting it again"
        )
        return True

    def submit(self, request: BatchRequest) -> RunnerStream:
        """Send a sequence to the runner (waiting while it starts again); RunnerUnavailable when it cannot run."""
        message = request_message(request)
        with self._condition:
            self._condition.wait_for(lambda: not self._starting or self._closing, timeout=START_SECONDS)
            if self._channel is None or self._closing:
                raise RunnerUnavailable(self._broken or f"the model runner of {self.name} is not running")
            self._next += 1
            stream = RunnerStream(self, self._next)
            self._streams[stream.number] = stream
            channel = self._channel
        with contextlib.suppress(OSError):  # the child is dying: the relay fails the stream
            channel.send({"op": "submit", "id": stream.number, "request": message})
        return stream

    def cancel(self, number: int) -> None:
        with self._condition:
            channel = self._channel if number in self._streams else None
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.send({"op": "cancel", "id": number})

    @property
    def in_flight(self) -> int:
        """Sequences sent and not yet finished."""
        return len(self._streams)

    def close(self) -> None:
        """Stop the child (in-flight sequences end as failed) and wait for it."""
        with self._condition:
            self._closing = True
            channel, process = self._channel, self._process
            self._condition.notify_all()
        if channel is not None:
            channel.close()
        if process is not None:
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class RunnerPool:
    """One runner at a time for several models: a request for another model waits until the current
    model has nothing in flight, then that model's runner replaces it (as llama_cpp.server swaps models)."""

    def __init__(self, specs: dict[str, RunnerSpec], log: Log) -> None:
        self.specs = specs
        self._log = log
        self._lock = threading.Condition()
        self._wanted: deque[str] = deque()
        self.current: Runner | None = None

    @property
    def parallel(self) -> int:
        """The sequences the current runner decodes together (the first model's setting before it starts)."""
        if self.current is not None:
            return self.current.parallel
        return next(iter(self.specs.values())).parallel

    def start(self, name: str) -> Runner:
        """Start the runner of `name` (at start-up: the first model)."""
        runner = Runner(self.specs[name], name, self._log)
        runner.start()
        self.current = runner
        return runner

    def submit(self, name: str, request: BatchRequest) -> RunnerStream:
        """Send `request` to the runner of model `name`, swapping models when needed."""
        with self._lock:
            self._wanted.append(name)
            try:
                while True:
                    current = self.current
                    if current is not None and current.name == name and self._wanted[0] == name:
                        return current.submit(request)
                    if self._wanted[0] == name and (current is None or current.in_flight == 0):
                        if current is not None:
                            current.close()
                        self.current = None
                        self.start(name)
                        continue
                    self._lock.wait(timeout=0.05)
            finally:
                self._wanted.remove(name)
                self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            if self.current is not None:
                self.current.close()
                self.current = None


def _keep_tail(pipe: IO[bytes], tail: deque[bytes]) -> None:
    """Read a child's stderr to its end, keeping the last STDERR_TAIL bytes (about)."""
    size = 0
    for line in pipe:
        tail.append(line)
        size += len(line)
        while size > STDERR_TAIL and len(tail) > 1:
            size -= len(tail.popleft())


def _ending(returncode: int, tail: deque[bytes]) -> str:
    """What ended a runner, as words: llama.cpp's assert if it printed one, else the signal or status."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    stderr = b"".join(tail).decode("utf-8", errors="replace")
    reason = ChildResult(returncode, "", stderr).crash_reason()
    return reason.removeprefix("it ") if reason.startswith("it ") else f"aborted: {reason}"


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
