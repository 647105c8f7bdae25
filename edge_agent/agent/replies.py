"""Every reply an agent sends its users goes through here: refusals at once, answers through the journal's outbox.

An accepted prompt's answer (or error) is stored in the journal before it is published and marked sent when the
broker acknowledged the publish; what was never acknowledged is published again after a restart. A repeated
request id is answered from the store, on the repeat's own route.
"""

from __future__ import annotations

import logging

from ..mqtt.api import Transport
from ..wire.messages import Chunk, ErrorAnswer, ErrorBody, ReplyRoute, encode
from .journal import Journal

log = logging.getLogger(__name__)


class Replies:
    def __init__(self, *, device: str, journal: Journal, transport: Transport, qos: int = 1):
        self.device, self.journal, self.transport, self.qos = device, journal, transport, qos
        self._in_flight: dict[int, str] = {}  # publish id -> request id, until the broker acknowledges it

    def refuse(self, route: ReplyRoute, code: str, message: str) -> None:
        """A prompt that was not accepted: one error on its route, not stored (a retry is a new attempt)."""
        self._publish(route.topic, route.correlation_data, error_payload(self.device, route, code, message))

    def finish(self, route: ReplyRoute, payload: bytes) -> None:
        """An accepted prompt's one reply: stored with the end of its prompt, then published."""
        self.journal.finish(route.request_id, route.topic, route.correlation_data, payload)
        self._send_stored(route.request_id, route.topic, route.correlation_data, payload)

    def chunk(self, route: ReplyRoute, index: int, delta: str) -> None:
        self._publish(route.topic, route.correlation_data,
                      encode(Chunk(request_id=route.request_id, index=index, delta=delta)))

    def repeat(self, route: ReplyRoute, payload: bytes) -> None:
        """The stored answer of a finished request, again, to the route a repeat of it named."""
        self._publish(route.topic, route.correlation_data, payload)

    def resend_unsent(self) -> int:
        """After a restart: publish again every stored reply the broker never acknowledged."""
        unsent = self.journal.unsent()
        for reply in unsent:
            log.info("re-sending the stored reply to %s", reply.request_id)
            self._send_stored(reply.request_id, reply.topic, reply.correlation, reply.payload)
        return len(unsent)

    def on_published(self, mid: int) -> None:
        request_id = self._in_flight.pop(mid, None)
        if request_id is not None:
            self.journal.mark_sent(request_id)

    def _send_stored(self, request_id: str, topic: str, correlation: str | None, payload: bytes) -> None:
        mid = self._publish(topic, correlation, payload)
        if self.qos == 0:
            self.journal.mark_sent(request_id)  # QoS 0: the broker acknowledges nothing
        else:
            self._in_flight[mid] = request_id

    def _publish(self, topic: str, correlation: str | None, payload: bytes) -> int:
        corr = bytes.fromhex(correlation) if correlation else None
        return self.transport.publish(topic, payload, qos=self.qos, correlation_data=corr)


def error_payload(device: str, route: ReplyRoute, code: str, message: str) -> bytes:
    return encode(ErrorAnswer(request_id=route.request_id, device=device, error=ErrorBody(code=code, message=message)))
