"""Where a run stands: per stage (rule), jobs done, running and failed, and the last line of each unfinished
job's log, so a user of a two-day run need not read 400 logs.

Read from files only, so it works beside a running controller, on a login node while SLURM runs the jobs,
and after a crash: the Snakemake logs (.snakemake/log: which job ran under which rule, with which log,
outputs and benchmark file, and whether it finished or failed) and the results folder (the outputs that
exist, each job's log, the benchmark files' measured times). A job is known by its log file, the one path
every working rule has and that stays the same from one run to the next.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

DONE, RUNNING, FAILED = "done", "running", "failed"

TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
JOB = re.compile(r"^(\s*)(?:local)?(?:rule|checkpoint) (\w+):$")
FIELD = re.compile(r"^\s+(\w+): (.*)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: \w+\)$")
ERROR = re.compile(r"^\s*Error in rule (\w+):$")
SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+)")
ERROR_LOG_SUFFIX = " (check log file(s) for error details)"
# Snakemake's last line, on success and on failure; a log without it belongs to a run that is still going,
# or to one that was killed.
RUN_OVER = "Complete log(s): "


@dataclass
class Job:
    rule: str
    log: Path
    outputs: list[Path]
    benchmark: Path | None = None
    state: str = RUNNING  # of the job's last event: started (running), finished (done), error (failed)
    since: datetime | None = None  # when that event was logged
    slurm_id: str | None = None
    interrupted: bool = False  # started by a run that ended without finishing it

    def outputs_exist(self) -> bool:
        return all(p.exists() for p in self.outputs)

    def last_line(self) -> str:
        """The last non-empty line of the job's log (a progress bar's latest redraw)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log yet)"
        lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
        return lines[-1] if lines else "(log empty)"

    def minutes(self) -> float:
        """The measured time of a finished job (its benchmark file), 0 without one."""
        if not self.benchmark or not self.benchmark.exists():
            return 0.0
        with open(self.benchmark, newline="") as f:
            seconds = [float(row["s"]) for row in csv.DictReader(f, delimiter="\t")]
        return max(seconds, default=0.0) / 60


@dataclass
class Run:
    """What one Snakemake log says: the jobs it started (by log file) and whether the run is over."""
    path: Path
    workdir: Path
    jobs: dict[Path, Job] = field(default_factory=dict)
    over: bool = False


def _blocks(lines: list[str]):
    """(timestamp, kind, rule, fields) of every job event: kind 'start' for a job's description, 'error'
    for an error report (a group's error lists its jobs as indented rule blocks)."""
    stamp, in_error = None, False
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := TIMESTAMP.match(line):
            stamp, in_error = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y"), False
        elif line.strip() == "jobs:":  # the job list of a group's error report
            in_error = True
        rule_match = ERROR.match(line) or JOB.match(line)
        if rule_match:
            kind = "error" if ERROR.match(line) or in_error else "start"
            fields, i = {}, i + 1
            indent = len(line) - len(line.lstrip())
            while i < len(lines) and (m := FIELD.match(lines[i])) and len(lines[i]) - len(lines[i].lstrip()) > indent:
                fields[m.group(1)] = m.group(2)
                i += 1
            yield stamp, kind, rule_match.groups()[-1], fields
            continue
        yield stamp, "line", None, {"text": line}
        i += 1


def work_dir(path: Path, text: str) -> Path:
    """What the log's relative paths are relative to: the folder holding its .snakemake (so a moved or copied
    work dir still reads), else the one its header names."""
    path = path.resolve()
    if path.parent.name == "log" and path.parent.parent.name == ".snakemake":
        return path.parent.parent.parent
    named = re.search(r"^\s*Working directory: (.+)$", text, flags=re.MULTILINE)
    return Path(named.group(1)) if named else Path.cwd()


def read_run(path: Path) -> Run:
    text = Path(path).read_text(errors="replace")
    run = Run(Path(path), work_dir(Path(path), text))
    by_id: dict[str, Job] = {}

    def resolve(p: str) -> Path:
        return run.workdir / p.strip()

    def listed(value: str) -> list[Path]:
        return [resolve(p) for p in value.removesuffix(ERROR_LOG_SUFFIX).split(", ") if p.strip()]

    for stamp, kind, rule, fields in _blocks(text.splitlines()):
        if kind == "line":
            line = fields["text"]
            if m := FINISHED.match(line):
                if job := by_id.get(m.group(1)):
                    job.state, job.since = DONE, stamp
            elif m := SUBMITTED.match(line):
                if job := by_id.get(m.group(1)):
                    job.slurm_id = m.group(2)
            elif line.startswith(RUN_OVER):
                run.over = True
            continue
        if "log" not in fields:  # target rules (all, stage_*): no work of their own
            continue
        log = listed(fields["log"])[0]
        if kind == "start":
            job = Job(rule, log, listed(fields.get("output", "")),
                      resolve(fields["benchmark"]) if "benchmark" in fields else None, RUNNING, stamp)
            run.jobs[log] = job
        else:
            job = run.jobs.setdefault(log, Job(rule, log, listed(fields.get("output", ""))))
            job.state, job.since = FAILED, stamp
        by_id[fields.get("jobid", "")] = job
    return run


def snakemake_logs(where: str | Path) -> list[Path]:
    """One Snakemake log, or every log of a .snakemake/log folder, oldest first (their names are their
    start times)."""
    where = Path(where)
    return [where] if where.is_file() else sorted(where.glob("*.snakemake.log"))


def job_states(results: str | Path, logs: str | Path) -> list[Job]:
    """Every job under `results` that a Snakemake log mentions, in the state of its latest event, in the
    order the runs first started them. A finished job counts as done only while its outputs exist; a
    failed job whose outputs exist (a group's job that finished before another failed) is done too. A job
    started by a run that has ended without finishing it (stopped, or a failed run shutting down) is failed
    and marked interrupted."""
    results = Path(results).resolve()
    runs = [read_run(p) for p in snakemake_logs(logs)]
    jobs: dict[Path, Job] = {}
    for n, run in enumerate(runs):
        newest = n == len(runs) - 1
        for log, job in run.jobs.items():
            if not log.resolve().is_relative_to(results):
                continue
            if job.state == RUNNING and (run.over or not newest):
                job.state, job.interrupted = FAILED, True
            jobs[log] = job  # a job keeps the place of its first run: stages stay in pipeline order
    for job in jobs.values():
        if job.state == FAILED and not job.interrupted and job.outputs_exist():
            job.state = DONE
    return [job for job in jobs.values() if job.state != DONE or job.outputs_exist()]


def stage_table(jobs: list[Job]) -> list[dict]:
    """Per rule, in pipeline order: jobs done, running, failed and the done jobs' measured minutes."""
    rows: dict[str, dict] = {}
    for job in jobs:
        row = rows.setdefault(job.rule, {"stage": job.rule, DONE: 0, RUNNING: 0, FAILED: 0, "minutes": 0.0})
        row[job.state] += 1
        if job.state == DONE:
            row["minutes"] += job.minutes()
    return list(rows.values())


def shown(path: Path) -> Path:
    """A path as short as it is unambiguous: relative to the current directory when under it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def format_status(jobs: list[Job], now: datetime | None = None) -> str:
    """The stage table, then one line per running and per failed job with the last line of its log."""
    now = now or datetime.now()
    rows = stage_table(jobs)
    if not rows:
        return "no jobs recorded yet (no Snakemake log mentions this results folder)"
    width = max(len(r["stage"]) for r in rows)
    lines = [f"{'stage':<{width}}  {DONE:>5}  {RUNNING:>7}  {FAILED:>6}  minutes"]
    lines += [f"{r['stage']:<{width}}  {r[DONE]:>5}  {r[RUNNING]:>7}  {r[FAILED]:>6}  {r['minutes']:>7.1f}"
              for r in rows]
    for state in (RUNNING, FAILED):
        unfinished = [job for job in jobs if job.state == state]
        if unfinished:
            lines.append(f"\n{state}:")
        for job in unfinished:
            when = f", {(now - job.since).total_seconds() / 60:.0f} min ago" if job.since else ""
            what = "interrupted" if job.interrupted else state
            slurm = f", SLURM job {job.slurm_id}" if job.slurm_id else ""
            lines.append(f"  {job.rule} {shown(job.log)} ({what}{when}{slurm}): {job.last_line()}")
    return "\n".join(lines)
