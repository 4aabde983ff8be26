"""The sanity page: is a run (the pilot, before the paper run) doing what it should? Each check names what it
looked at, the expected range, the measured value and pass / fail / missing with a one-line reason; a check
whose input is absent is `missing`, never `pass`.

  zoo top-1           the ensemble's top-1 equals the label on > min_zoo_top1 of the labelled images it
                      explains (label tables: teacher_class vs gt_class, both positions in the table's classes)
  targets = labels    every finished labelled image of every explain store explained its own class, compared
                      by name: store attrs `classes`[target] == the index's `classes`[class_idx]
  D9 stability        mean over stores of attrs `stability`.d9_iou (two noise draws on a store's first
                      images) > min_stability_iou
  pre-training loss   each pre-trained model's log.csv (beside final.pt): last epoch's mean loss < first's
  fine-tune mIoU      each cell's mIoU > chance (100 / (2K - 1), a uniform guess over K classes) +
                      min_miou_over_chance
  minutes vs estimate per heavy rule, the benchmark files' measured minutes against the SLURM runtime the
                      workflow requested (pssl.cluster.runtime_minutes): pass if no job ran past its estimate

The failures are for a person to read, so the job itself succeeds whatever the verdicts.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pssl.errors import InputError
from pssl.io import atomic_file
from pssl.layout import cell_of
from pssl.report.html import html_page, html_table
from pssl.settings import SanitySettings

log = logging.getLogger(__name__)

PASS, FAIL, MISSING, NOT_APPLICABLE = "pass", "fail", "missing", "n/a"
COLUMNS = ("check", "subject", "expected", "measured", "status", "reason")
CAPTION = "Sanity checks: expected ranges, measured values, verdicts"
# A job whose estimated work (the estimate less its start-up allowance) is shorter than this is dominated by
# its start-up: its measured time says nothing about the throughput runtime_scale corrects.
MIN_WORK_MIN = 5.0
# The rules whose benchmark files every run writes (self-training adds teacher_labels and self_train).
CORE_HEAVY_RULES = ("zoo_model", "explain_shard", "label_shard", "pretrain", "finetune")


@dataclass(frozen=True)
class Check:
    check: str
    subject: str
    expected: str
    measured: float | None
    status: str
    reason: str


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def missing(check: str, subject: str, expected: str, reason: str) -> Check:
    return Check(check, subject, expected, None, MISSING, reason)


def absent(paths: list[str]) -> list[str]:
    return [p for p in paths if not Path(p).exists()]


# ---- the checks ----------------------------------------------------------------------------------------------

def zoo_top1(labels: list[str], floor: float) -> Check:
    """The teacher's (the zoo ensemble's) top-1 against the label, over every labelled image it saw."""
    from pssl.tables import read_table
    name, expected = "zoo top-1 on the explained images", f"> {floor:.2f}"
    if not labels or absent(labels):
        return missing(name, "label tables", expected, "no label table given" if not labels else
                       f"absent: {', '.join(absent(labels)[:3])}")
    agree = seen = 0
    teachers, n_classes = set(), set()
    for path in labels:
        frame, meta = read_table(path)
        teachers.update(meta.get("teacher", []))
        n_classes.add(len(meta.get("classes", [])))
        # an unreadable image has no teacher prediction (confidence 0): not an image the zoo saw
        rows = frame[(frame["gt_class"] >= 0) & (frame["teacher_conf"] > 0)]
        agree += int((rows["teacher_class"] == rows["gt_class"]).sum())
        seen += len(rows)
    subject = f"ensemble of {len(teachers)}: {', '.join(sorted(teachers))}" if teachers else "the teacher"
    if not seen:
        return missing(name, subject, expected, "no labelled image with a teacher prediction in the label tables")
    value = agree / seen
    space = f"among the table's {n_classes.pop()} classes" if len(n_classes) == 1 and 0 not in n_classes else \
        "in the tables' class spaces"
    return Check(name, subject, expected, round(value, 4), verdict(value > floor),
                 f"teacher top-1 ({space}) equals the label on {agree} of {seen} labelled images")


def store_attrs(path: str) -> dict:
    from pssl import store
    return dict(store.open_store(path).attrs)


def names(classes: list[str], numbers: np.ndarray, what: str) -> np.ndarray:
    """The class name of each number (a position in `classes`); a number outside it names itself."""
    table = np.asarray(list(classes), dtype=object)
    return np.array([table[n] if 0 <= n < len(table) else f"{what} {n} (no such class)" for n in numbers.tolist()],
                    dtype=object)


def targets_match_labels(stores: list[str], index: str) -> Check:
    """Every finished, labelled image under target mode `class` explained its own class, by name."""
    from pssl import store
    from pssl.tables import read_table
    name, expected = "explain targets equal the labels (by class name)", "all (1.0000)"
    if not stores or absent([*stores, index]):
        return missing(name, "explain stores", expected, "no explain store given" if not stores else
                       f"absent: {', '.join(absent([*stores, index])[:3])}")
    index_classes = list(read_table(index)[1].get("classes", []))
    compared = matched = skipped = 0
    problems = []  # one line per store that fails
    for path in stores:
        group = store.open_store(path)
        attrs, label = dict(group.attrs), Path(path).name
        if attrs.get("smoothgrad", {}).get("target") != "class":
            skipped += 1
            continue
        if "classes" not in attrs:
            problems.append(f"{label} records no class names (attrs['classes'] absent: written before classes "
                            f"were identified by name; rerun explain)")
            continue
        status, class_idx, target = group["status"][:], group["class_idx"][:], group["target"][:]
        rows = np.flatnonzero((status == store.DONE) & (class_idx >= 0))
        explained = names(attrs["classes"], target[rows], "output")
        labelled = names(index_classes, class_idx[rows], "index class")
        wrong = np.flatnonzero(explained != labelled)
        compared += len(rows)
        matched += len(rows) - len(wrong)
        if len(wrong):
            i = wrong[0]
            problems.append(f"{label} image {int(group['image_id'][rows[i]])} explained {explained[i]}, "
                            f"labelled {labelled[i]}")
    subject = f"{len(stores)} explain store(s)"
    if skipped == len(stores):
        return Check(name, subject, expected, None, NOT_APPLICABLE,
                     "explain target is top1 (the zoo's prediction, not the label): nothing to compare")
    value = round(matched / compared, 4) if compared else None
    if problems:
        share = f"{compared - matched} of {compared} images explained another class; " if matched < compared else ""
        return Check(name, subject, expected, value, FAIL, share + "; ".join(problems[:2]))
    if not compared:
        return missing(name, subject, expected, "no finished labelled image in the stores")
    return Check(name, subject, expected, value, PASS,
                 f"all {compared} finished labelled images explained their own class"
                 + (f" ({skipped} top1 store(s) left out)" if skipped else ""))


def stability(stores: list[str], floor: float) -> Check:
    """SmoothGrad's sampling alone: D9 IoU of two noise draws, recorded by the explain job in each store."""
    name, expected = "D9 stability between two noise draws", f"> {floor:.2f}"
    if not stores or absent(stores):
        return missing(name, "explain stores", expected, "no explain store")
    figures = [store_attrs(p).get("stability") for p in stores]
    subject = f"{len(stores)} explain store(s)"
    unrecorded = [Path(p).name for p, f in zip(stores, figures) if not f or "d9_iou" not in f]
    if unrecorded:
        return Check(name, subject, expected, None, FAIL,
                     f"not recorded in {len(unrecorded)} of {len(stores)} store(s) ({unrecorded[0]}: written "
                     f"before the explain job measured it; rerun explain)")
    ious = [float(f["d9_iou"]) for f in figures]
    value = float(np.mean(ious))
    images = sorted({int(f.get("images", 0)) for f in figures})
    return Check(name, subject, expected, round(value, 4), verdict(value > floor),
                 f"mean D9 IoU over {len(stores)} store(s) ({'/'.join(map(str, images))} images each), "
                 f"lowest {min(ious):.3f}")


def epoch_losses(log_csv: Path) -> tuple[float, float, str]:
    """(first, last, what was compared) of a training log: the first and last epoch's mean loss, or with
    one epoch logged its first and last fifth of the steps."""
    frame = pd.read_csv(log_csv).drop_duplicates("step", keep="last")  # a resumed run may log a step twice
    if frame.empty:
        raise InputError(f"{log_csv} logs no step")
    epochs = frame.groupby("epoch")["loss"].mean()
    if len(epochs) >= 2:
        return float(epochs.iloc[0]), float(epochs.iloc[-1]), f"epoch {epochs.index[0]} vs {epochs.index[-1]}"
    fifth = max(1, len(frame) // 5)
    return (float(frame["loss"].iloc[:fifth].mean()), float(frame["loss"].iloc[-fifth:].mean()),
            f"one epoch logged: its first vs last {fifth} steps")


def pretraining_loss(pretrained: list[str]) -> list[Check]:
    """Each pre-trained model: the mean loss of its last epoch below its first's (log.csv beside final.pt)."""
    name = "pre-training loss falling"
    if not pretrained:
        return [missing(name, "pre-trained models", "last epoch < first", "no pre-trained model given")]
    checks = []
    for final in map(Path, pretrained):
        subject = f"{final.parent.parent.name}/{final.parent.name}"
        log_csv = final.parent / "log.csv"
        if not log_csv.exists():
            checks.append(missing(name, subject, "last epoch < first", f"no {log_csv}"))
            continue
        first, last, compared = epoch_losses(log_csv)
        ok = last < first  # a NaN loss compares false: fails
        checks.append(Check(name, subject, f"< {first:.4f} (the first epoch's)", round(last, 4), verdict(ok),
                            f"mean loss {first:.4f} -> {last:.4f} ({compared})"
                            + ("" if ok else ": not falling" + (" (NaN)" if math.isnan(last) else ""))))
    return checks


def chance_miou(num_classes: int) -> float:
    """mIoU (points) of a uniform random guess over K balanced classes: IoU 1 / (2K - 1) for every class."""
    return 100 / (2 * num_classes - 1)


def finetune_miou(cells: list[str], margin: float) -> list[Check]:
    """Every fine-tuned cell (its metrics.json, which names the cell) above chance + margin."""
    name = "fine-tune mIoU above chance"
    if not cells:
        return [missing(name, "fine-tune cells", f"> chance + {margin:g}", "no fine-tune cell given")]
    checks = []
    for path in map(Path, cells):
        if not path.exists():
            checks.append(missing(name, str(path), f"> chance + {margin:g}", f"no {path}"))
            continue
        metrics = json.loads(path.read_text())
        cell = cell_of(metrics, str(path))
        subject = f"{cell['dataset']} {cell['model']} {cell['init']} seed{cell['seed']}"
        k = len(metrics["classes"])
        floor = chance_miou(k) + margin
        miou = 100 * float(metrics["miou"])
        split = metrics.get("eval", {}).get("split", "?")
        checks.append(Check(name, subject, f"> {floor:.2f}", round(miou, 2), verdict(miou > floor),
                            f"{split} mIoU {miou:.2f} at lr {metrics.get('lr')}; chance {chance_miou(k):.2f} "
                            f"({k} classes) + {margin:g}"))
    return checks


def runtimes(config: dict) -> list[Check]:
    """Per heavy rule: the jobs' measured minutes (benchmark files) against what the workflow requested."""
    from pssl.cluster import benchmark_runs, runtime_minutes, work_minutes
    name = "minutes per job vs estimate"
    scale = config["cluster"]["runtime_scale"]
    by_rule: dict[str, list[tuple[float, int, float | None]]] = {}
    for rule, wildcards, measured in benchmark_runs(config["results"]):
        by_rule.setdefault(rule, []).append((measured, runtime_minutes(config, rule, wildcards),
                                             work_minutes(config, rule, wildcards)))
    checks = [missing(name, rule, "<= the estimate", f"no benchmark file under {config['results']}/benchmarks/"
                                                    f"{rule}") for rule in CORE_HEAVY_RULES if rule not in by_rule]
    for rule, jobs in by_rule.items():
        measured = float(np.mean([m for m, _, _ in jobs]))
        estimate = float(np.mean([e for _, e, _ in jobs]))
        over = sum(m > e for m, e, _ in jobs)
        implied = [m / w for m, _, w in jobs if w and w >= MIN_WORK_MIN]
        if implied:
            paper = (f"; paper-sized jobs need runtime_scale >= {max(implied):.2f} (measured / the estimate's "
                     f"work term, start-up included)")
        elif any(w for _, _, w in jobs):
            paper = (f"; too short to calibrate runtime_scale (work term {max(w for _, _, w in jobs if w):.1f} "
                     f"min < {MIN_WORK_MIN:g})")
        else:
            paper = ""
        checks.append(Check(name, f"{rule} ({len(jobs)} job{'s' if len(jobs) > 1 else ''})",
                            f"<= {estimate:.1f} min (estimate, mean)", round(measured, 2), verdict(over == 0),
                            f"measured / estimate {measured / estimate:.2f} at runtime_scale {scale:g}"
                            + (f"; {over} job(s) ran past their estimate" if over else "") + paper))
    return checks


# ---- the page ------------------------------------------------------------------------------------------------

def sanity_checks(index: str, labels: list[str], stores: list[str], pretrained: list[str], cells: list[str],
                  config: dict, settings: SanitySettings = SanitySettings()) -> pd.DataFrame:
    checks = [zoo_top1(labels, settings.min_zoo_top1), targets_match_labels(stores, index),
              stability(stores, settings.min_stability_iou), *pretraining_loss(pretrained),
              *finetune_miou(cells, settings.min_miou_over_chance), *runtimes(config)]
    return pd.DataFrame([asdict(c) for c in checks], columns=list(COLUMNS))


def summary(frame: pd.DataFrame) -> str:
    counts = frame["status"].value_counts()
    text = ", ".join(f"{counts[s]} {s}" for s in (PASS, FAIL, MISSING, NOT_APPLICABLE) if s in counts)
    return f"{len(frame)} checks: {text}"


def formatted(frame: pd.DataFrame) -> pd.DataFrame:
    shown = frame.copy()
    shown["measured"] = [("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:g}")
                         for v in frame["measured"]]
    shown["status"] = [s.upper() if s in (FAIL, MISSING) else s for s in frame["status"]]
    return shown


def sanity_section(csv: str | Path) -> tuple[str, str]:
    """A written sanity.csv as (HTML, Markdown) for the report page."""
    frame = pd.read_csv(csv, keep_default_na=False, na_values={"measured": [""]})
    title = f"{CAPTION} ({summary(frame)})"
    note = ("Each heavy rule's measured / estimate ratio shows how far the SLURM runtimes are off; raise "
            "cluster.runtime_scale to the 'paper-sized jobs need' figure before the paper run (the estimates' "
            "start-up allowance, cluster.startup_min, dominates a pilot's short jobs).")
    body = html_table(formatted(frame), title, note, index=False)
    md = f"## {title}\n\n{formatted(frame).to_markdown(index=False)}\n\n{note}\n"
    return body, md


def write_sanity(out: str | Path, index: str, labels: list[str], stores: list[str], pretrained: list[str],
                 cells: list[str], config: dict, settings: SanitySettings = SanitySettings()) -> str:
    """sanity.csv and sanity.html (`out` and beside it); returns the Markdown."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = sanity_checks(index, labels, stores, pretrained, cells, config, settings)
    with atomic_file(out) as tmp:
        frame.to_csv(tmp, index=False)
    body, md = sanity_section(out)
    with atomic_file(out.with_suffix(".html")) as tmp:
        tmp.write_text(html_page(CAPTION, body))
    for row in frame.itertuples():
        if row.status in (FAIL, MISSING):
            log.warning(f"{row.status}: {row.check} [{row.subject}]: {row.reason}")
    log.info(summary(frame))
    return md
