"""After a start: the journal's unfinished prompts resumed with their deadlines, unreadable rows answered, and the
prompts held during discovery handled."""

from __future__ import annotations

import logging
import time

from ..wire.messages import (
    ReplyRoute,
    load_json,
)
from .intake import route_of
from .journal import JournalEntry, UnreadableEntry
from .replies import Stream, error_payload

log = logging.getLogger(__name__)


class RecoverySteps:
    """What a (re)starting agent does once discovery ends (a part of `Agent`, which owns the state)."""

    def _end_discovery(self) -> None:
        self._discovering = False
        self._resume_journal()
        held, self._held = self._held, []
        for message in held:
            self._on_raw(message)  # each in its own guard, acknowledged when handled

    def _resume_journal(self) -> None:
        for entry in self.journal.unfinished():
            try:
                if isinstance(entry, UnreadableEntry):
                    self._answer_unreadable(entry)
                else:
                    self._resume(entry)
            except Exception:  # one bad row must not keep the others from resuming
                log.exception("resuming journaled request %s failed", getattr(entry, "request_id", "?"))

    def _resume(self, entry: JournalEntry) -> None:
        request = entry.request
        deadline = request.deadline_at or request.received_at + self.config.moa.request_timeout_s
        if deadline <= time.time():
            log.warning("journaled request %s passed its deadline while the agent was down", request.request_id)
            self.counts["failed"] += 1
            route = route_of(request)
            self.replies.finish(route, error_payload(self.device, route, "timeout",
                                                     "the request's deadline passed while its agent was down"))
            return
        run = self._new_run(request, remaining_s=deadline - time.time(), layer=entry.layer,
                            previous=list(entry.answers), trace=list(entry.trace))
        self.runs[request.request_id] = run
        if request.stream:
            self._streams[request.request_id] = Stream(route_of(request))
        log.info("resuming journaled request %s at layer %d (%.0fs left)", request.request_id, entry.layer,
                 deadline - time.time())
        self._execute(run, run.start(self._alive(), self.rng, time.monotonic()))

    def _answer_unreadable(self, entry: UnreadableEntry) -> None:
        """A journaled prompt this version cannot read: an error on its route, so it is not left unanswered."""
        log.warning("journaled request %s unreadable (%s): answering with an error", entry.request_id, entry.problem)
        data = load_json(entry.raw, "journaled request")
        topic = data.get("reply_topic") if isinstance(data, dict) else None
        route = ReplyRoute(topic=topic or self.topics.answer(self.device, entry.request_id),
                           correlation_data=data.get("correlation_data") if isinstance(data, dict) else None,
                           request_id=entry.request_id)
        self.counts["failed"] += 1
        self.replies.finish(route, error_payload(self.device, route, "internal",
                                                 "this prompt was accepted by another version of the agent that "
                                                 "could not resume it; please send it again"))
