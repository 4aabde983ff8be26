"""Progress for long jobs: a redrawn bar on a terminal, a plain log line every `interval` s otherwise.

Hand-written because tqdm writes carriage-return redraws into non-terminal files, which makes SLURM
logs unreadable; here a non-TTY stream gets whole lines with count, rate and ETA.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "img", stream: TextIO | None = None,
                 interval: float | None = None, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 30.0)
        self.done = self.initial = initial
        self.start = self.last = time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = _fmt_seconds(eta) if eta == eta else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:5.1f}%) "
                f"{rate:.2f} {self.unit}/s elapsed {_fmt_seconds(elapsed)} eta {eta_s}")

    def _emit(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._emit()

    def close(self) -> None:
        self._emit(final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
