"""GreenCache's own log lines inside Serve replicas: straight into the replica's log file.

Serve gives each replica a log file (`logs/serve/replica_<app>_<deployment>_<id>.log`) behind a
buffering handler on the `ray.serve` logger, and turns the replica's stderr into INFO records
of that logger. With `RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE` (launch.SERVE_PERF_ENV) the buffer
holds many records, so an error GreenCache logged through Python's last-resort handler became a
buffered INFO line, lost when the replica died. `to_replica_log` sends the `greencache` loggers'
records through the same filters (replica and request context) to that file, one write per
record, at `settings().log_level`.
"""

from __future__ import annotations

import logging

_configured = False


class _Unbuffered(logging.Handler):
    """Serve's buffering handler's filters, then its file handler, without the buffer."""

    def __init__(self, buffered: logging.handlers.MemoryHandler) -> None:
        super().__init__()
        self.buffered = buffered

    def emit(self, record: logging.LogRecord) -> None:
        if self.buffered.filter(record) and self.buffered.target is not None:
            self.buffered.target.handle(record)


def to_replica_log() -> None:
    """Call from a Serve deployment's constructor; does nothing outside Serve or twice."""
    import logging.handlers

    from deployments.settings import settings

    global _configured
    if _configured:
        return
    handlers = []
    for h in logging.getLogger("ray.serve").handlers:
        if isinstance(h, logging.handlers.MemoryHandler):
            handlers.append(_Unbuffered(h))
        elif isinstance(h, logging.FileHandler):
            handlers.append(h)
    if not handlers:  # not in a replica with a log file: leave logging alone
        return
    ours = logging.getLogger("greencache")
    for h in handlers:
        ours.addHandler(h)
    ours.setLevel(settings().log_level)
    ours.propagate = False
    _configured = True
