"""The run's log file (Hydra's ``hydra.job_logging`` file handler): a full disk stops the log file with one
warning line, not a traceback for every later log line; the run reports the write that matters itself."""

from __future__ import annotations

import logging
import sys


class RunLogFile(logging.FileHandler):
    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = True):
        super().__init__(filename, mode=mode, encoding=encoding, delay=delay)
        self.stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.stopped:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        self.stopped = True
        print(f"warning: {self.baseFilename}: log file stopped ({error.strerror or error})", file=sys.stderr)
