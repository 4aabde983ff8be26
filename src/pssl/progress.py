"""Progress of long jobs as log lines: count, rate, ETA and the job's latest statistics (loss, lr).

Hand-written because tqdm writes carriage-return redraws into non-terminal files, which makes SLURM
logs unreadable; here every report is a whole line through the `pssl` logger, like every other message
(so distributed jobs print it from the primary rank only), every `interval` seconds and at the end.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("pssl.progress")


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "img", interval: float | None = None, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = interval if interval is not None else (5.0 if sys.stderr.isatty() else 30.0)
        self.done = self.initial = initial
        self.start = self.last = time.monotonic()
        self.stats: dict[str, float] = {}

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = _fmt_seconds(eta) if eta == eta else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        stats = "".join(f" {k} {v:.4g}" for k, v in self.stats.items())
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:5.1f}%){stats} "
                f"{rate:.2f} {self.unit}/s elapsed {_fmt_seconds(elapsed)} eta {eta_s}")

    def update(self, n: int = 1, **stats: float) -> None:
        """`n` more units done; `stats` (e.g. loss=0.41, lr=0.01) are shown with the next line."""
        self.done += n
        self.stats.update(stats)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.info(self.line())

    def close(self) -> None:
        log.info(self.line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
