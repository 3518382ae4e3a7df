"""Error logging, with ``logging`` imported on the first message, not at import time.

The library logs only failures (hooks that raise); importing ``logging`` up front would
cost every service that uses the library a few milliseconds at start-up for nothing.
"""

from __future__ import annotations


def log_error(logger_name: str, message: str, *args: object, exc_info: BaseException | None = None) -> None:
    import logging

    logging.getLogger(logger_name).error(message, *args, exc_info=exc_info)
