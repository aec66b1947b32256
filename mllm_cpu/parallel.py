"""Run one function over many items with a bounded number in flight, results handed back as they finish."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from mllm_cpu.backend import ReplyFailed

Item = TypeVar("Item")
Result = TypeVar("Result")


def solve_each(
    solve: Callable[[Item], Result],
    items: list[Item],
    parallel: int = 1,
    on_failure: Callable[[Item, Exception], None] | None = None,
) -> Iterator[tuple[Item, Result]]:
    """Yield (item, solve(item)) for every item, in order with `parallel` 1, else as each finishes.

    Up to `parallel` items are solved at once on daemon threads (so Ctrl-C in the caller never
    waits for them), while the caller handles each result on its own thread, one at a time.
    An item whose reply failed (ReplyFailed: an endpoint or the model runner) goes to `on_failure` when given; any other
    error is raised, after which no new item is started.
    """
    if parallel <= 1:
        for item in items:
            try:
                result = solve(item)
            except ReplyFailed as error:
                if on_failure is None:
                    raise
                on_failure(item, error)
                continue
            yield item, result
        return
    todo: queue.SimpleQueue[Item] = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    done: queue.SimpleQueue[tuple[Item, Result | None, BaseException | None]] = queue.SimpleQueue()

    def work() -> None:
        while True:
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((item, solve(item), None))
            except BaseException as error:  # handed to the caller's thread
                done.put((item, None, error))

    for _ in range(min(parallel, len(items))):
        threading.Thread(target=work, daemon=True).start()
    try:
        for _ in items:
            item, outcome, failure = done.get()
            if failure is None:
                yield item, outcome  # type: ignore[misc]
            elif isinstance(failure, ReplyFailed) and on_failure is not None:
                on_failure(item, failure)
            else:
                raise failure
    finally:
        while not todo.empty():
            todo.get_nowait()
