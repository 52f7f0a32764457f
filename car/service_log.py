"""The hub's and the web server's logs: a logging.Logger whose lines go to a LogFile."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from car.logfile import LogFile


class _LogFileHandler(logging.Handler):
    def __init__(self, file: LogFile) -> None:
        super().__init__()
        self.file = file

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.file.write(text)  # failures are the LogFile's to tell, once

    def close(self) -> None:
        self.file.close()
        super().close()


def make_logger(name: str, path: Path, backup_count: int, max_bytes: int = 0) -> logging.Logger:
    """The logger `name`, writing ISO-8601 UTC stamped lines to `path` (rolled over before a line
    would take it past max_bytes > 0); replaces any handler a previous owner left."""
    logger = logging.getLogger(name)
    close_logger(logger)
    handler = _LogFileHandler(LogFile(path, backup_count, max_bytes))
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime  # the time format of the run logs
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
