"""JSON logs through structlog, with region, round and message context bound per message."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(service: str, region: str, level: str = "info") -> structlog.stdlib.BoundLogger:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # FastStream and aio-pika log through the standard library: keep them quiet but visible.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logger: structlog.stdlib.BoundLogger = structlog.get_logger().bind(service=service, region=region)
    return logger


bind_context = structlog.contextvars.bound_contextvars
