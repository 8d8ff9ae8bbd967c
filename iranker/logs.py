"""Progress and warnings of the library go through `logging` (the `iranker` logger and its children). Whatever runs
the library installs the one handler that prints them to stderr as `[iranker] message` (`[iranker] warning: ...`):
the command line, the pipeline's components and the benchmarks call `setup()`; a program that embeds iranker
configures logging its own way. Machine-readable results stay on stdout.
"""

from __future__ import annotations

import logging
import sys


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"[iranker] {level}{record.getMessage()}"


def setup(level: int = logging.INFO) -> logging.Logger:
    """Print the `iranker` logger's records at `level` and above to stderr (once, however often it is called)."""
    logger = logging.getLogger("iranker")
    handler = next((h for h in logger.handlers if getattr(h, "iranker", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.iranker = True
        handler.setFormatter(_Format())
        logger.addHandler(handler)
    else:
        handler.setStream(sys.stderr)  # the stderr of now (a caller may have redirected it)
    logger.setLevel(level)
    return logger
