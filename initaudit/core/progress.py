"""Progress on stderr for audits that take a while: one line, rewritten per phase.

Silent for the first two seconds (a quick audit shows nothing), when stderr is not a
terminal (so redirected logs and JSON on stdout stay clean), and with ``--quiet``.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

DELAY = 2.0  # seconds before the first line


class Progress:
    def __init__(self, enabled: bool = True, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.clock = clock
        self.started = clock()
        self.shown = False

    def phase(self, what: str) -> None:
        """Say that ``what`` (building, parameter statistics, forward, ...) has begun."""
        if not self.enabled or self.clock() - self.started < DELAY:
            return
        self.stream.write(f"\rinitaudit: {what}... ({self.clock() - self.started:.0f}s)\x1b[K")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


SILENT = Progress(enabled=False)
