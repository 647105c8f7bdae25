"""The `edge-moa status` table."""

from __future__ import annotations

from .wire.messages import Status

MB = 1024 * 1024


def render_table(statuses: dict[str, Status], now: float) -> str:
    header = f"{'agent':<16} {'online':<7} {'model':<28} {'queue':>6} {'MB/cap':>13} {'alpha s':>8} {'free MB':>8} {'done':>5} {'p50 s':>6} {'age s':>6}"
    lines = [header, "-" * len(header)]
    for device, s in sorted(statuses.items()):
        age = f"{now - s.sent_at:.0f}" if s.sent_at else "-"
        bytes_cap = (f"{(s.queue_bytes or 0) / MB:.1f}/{(s.queue_cap_bytes or 0) / MB:.0f}"
                     if s.queue_cap_bytes is not None else "-")
        lines.append(
            f"{device:<16} {'yes' if s.online else 'NO':<7} {(s.model_id or '-'):<28.28} "
            f"{s.queue_length if s.queue_length is not None else '-':>6} {bytes_cap:>13} "
            f"{(f'{s.alpha_s:.2f}' if s.alpha_s else '-'):>8} "
            f"{(f'{s.memory_available_bytes / MB:.0f}' if s.memory_available_bytes else '-'):>8} "
            f"{s.answered if s.answered is not None else '-':>5} "
            f"{(f'{s.latency_p50_s:.1f}' if s.latency_p50_s else '-'):>6} {age:>6}"
        )
    if not statuses:
        lines.append("(no agents have reported on this broker yet)")
    return "\n".join(lines)
