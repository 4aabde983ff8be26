"""Surviving SLURM time limits: a long job (explain, pre-training, fine-tuning) checkpoints and requeues
itself shortly before its limit, so a 3-day pre-training runs in any partition's limit.

SLURM's `--requeue` covers preemption and node failure but not TIMEOUT, and a signal sent before the limit
would reach Snakemake's own job-step processes first (they die on SIGUSR1). So the job asks SLURM for its end
time instead (`squeue`, re-read every few minutes: limits can be changed while a job runs), and once it is
within `margin` of it, the caller saves its state and `requeue_and_wait` hands the job back to the queue.
The requeued job runs the same command, which resumes from the saved state. Outside SLURM nothing happens.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from datetime import datetime

log = logging.getLogger(__name__)

POLL_SECONDS = 300


def job_end_time(job_id: str) -> float | None:
    """The job's end time (epoch seconds) from squeue; None when SLURM does not say (no limit, no squeue)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True,
                             timeout=60).stdout.strip()
        return datetime.fromisoformat(out).timestamp()  # SLURM prints local time without a zone
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class TimeLimit:
    """`expiring()` is true once the SLURM job this process runs in is within `margin_min` of its limit and
    this process has done `min_progress` units of work (so every run of a requeued job moves forward)."""

    def __init__(self, margin_min: float, min_progress: int = 1):
        self.job_id = os.environ.get("SLURM_JOB_ID")
        self.margin = margin_min * 60
        self.min_progress = min_progress
        self.progress = 0
        self._end: float | None = None
        self._read_at = -float("inf")

    def seconds_left(self) -> float | None:
        if not self.job_id:
            return None
        if time.monotonic() - self._read_at > POLL_SECONDS:
            self._end, self._read_at = job_end_time(self.job_id), time.monotonic()
        return None if self._end is None else self._end - time.time()

    def advance(self, units: int = 1) -> None:
        self.progress += units

    def expiring(self) -> bool:
        if self.progress < self.min_progress:
            return False
        left = self.seconds_left()
        return left is not None and left < self.margin

    def requeue_and_wait(self, requeue: bool = True) -> None:
        """Put the job back in the queue (one process of the job does: `requeue`); SLURM then stops this run.
        The state must be saved before."""
        if requeue:
            log.info(f"SLURM job {self.job_id}: {self.seconds_left():.0f} s left, within the {self.margin:.0f} s "
                     f"margin: state saved, requeueing")
            subprocess.run(["scontrol", "requeue", self.job_id], check=True)
        time.sleep(600)  # SLURM ends this run; returning would let the step finish without its outputs
        raise SystemExit(f"SLURM job {self.job_id} was requeued but not stopped within 10 minutes")
