"""Tokenization off the agent's loop: one thread of its own, so the loop never waits on the tokenizer and the
order of prompts is kept; the last few results are remembered, so an admitted prompt is not tokenized again for
its own first task (and the engine reads the ids from the request instead of tokenizing a third time)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..engine import ChatMessage

log = logging.getLogger(__name__)
Messages = tuple[ChatMessage, ...]


class OffLoopTokenizer:
    def __init__(self, prompt_ids: Callable[[Messages], list[int]], loop: asyncio.AbstractEventLoop, *,
                 remember: int = 64):
        self._prompt_ids = prompt_ids
        self._loop = loop
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self._recent: OrderedDict[Messages, tuple[int, ...]] = OrderedDict()
        self._remember = remember

    def ids(self, messages: Messages, then: Callable[[tuple[int, ...]], None],
            failed: Callable[[Exception], None]) -> None:
        """`then(ids)` or `failed(exc)` runs on the loop: at once when these messages were tokenized lately (so an
        admitted prompt's own first task is charged in the same step), later otherwise; a failure inside `then`
        goes to `failed` too."""
        known = self._recent.get(messages)
        if known is not None:
            self._deliver(then, failed, known, None)
            return
        future = self._pool.submit(self._prompt_ids, messages)
        future.add_done_callback(lambda f: self._loop.call_soon_threadsafe(self._done, messages, f, then, failed))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _done(self, messages: Messages, future: Future, then, failed) -> None:
        try:
            ids = tuple(future.result())
        except Exception as exc:  # noqa: BLE001  # the tokenizer choked on this request alone
            self._deliver(then, failed, None, exc)
            return
        self._recent[messages] = ids
        if len(self._recent) > self._remember:
            self._recent.popitem(last=False)
        self._deliver(then, failed, ids, None)

    @staticmethod
    def _deliver(then, failed, ids, error) -> None:
        try:
            if error is None:
                then(ids)
                return
        except Exception as exc:  # noqa: BLE001
            error = exc
        try:
            failed(error)
        except Exception:  # the last guard: log, never raise into the loop
            log.exception("handling a tokenization failure failed")
