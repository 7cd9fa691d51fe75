"""Progress of `aipc-lsp models fetch` and `aipc-lsp prepare` on stderr: a bar redrawn in place on a
terminal, one line per step when stderr is a file or a pipe (logs and CI keep every step)."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

BAR_WIDTH = 24


class TerminalProgress:
    """A progress callback, (message, percent or None): stages reported by fetch and prepare."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.percent = 0
        self._drawn = False
        self._last: tuple[str, int | None] | None = None

    def __call__(self, message: str, percent: int | None) -> None:
        if percent is not None:
            self.percent = max(0, min(100, int(percent)))
        if self.tty:
            filled = BAR_WIDTH * self.percent // 100
            line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.percent:>3}% {message}"
            columns = shutil.get_terminal_size((80, 24)).columns
            # Padded to the width, so a shorter message wipes out the end of a longer one.
            self.stream.write("\r" + line[:columns - 1].ljust(columns - 1))
            self._drawn = True
        elif (message, percent) != self._last:
            shown = f"{percent:>3}" if percent is not None else " .."
            self.stream.write(f"[{shown}%] {message}\n")
        self._last = (message, percent)
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (on a terminal), so what follows starts on a line of its own."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> "TerminalProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
