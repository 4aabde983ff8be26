"""Resuming under identity: the one rule for every job that keeps partial work across a kill or a requeue.

Partial work (an explain job's partial store, a training job's checkpoint, a teacher job's finished label
tables) is recorded with the job's *identity*: what decides its result (the settings that change outputs,
fingerprints of the input files, the class space). A rerun keeps the work only when the recorded identity
equals its own; otherwise the work belongs to another job (settings or inputs changed upstream), is
discarded, and the job starts over, saying which keys changed. Torch-free.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pssl.io import atomic_file

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"  # a job folder's record, for work kept as files (teacher labels)


def canonical(identity: dict) -> dict:
    """The identity as it reads back from JSON (tuples are lists), so a recorded one compares equal."""
    return json.loads(json.dumps(identity, sort_keys=True))


def changed_keys(recorded: dict, current: dict) -> str:
    """The keys that differ between two identities (one level into sections), e.g. "pretrain.fusion_prior"."""
    if not recorded:
        return "nothing recorded: an older release"
    keys = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            keys.append(key)
    return ", ".join(keys)


def resumable(recorded: dict | None, identity: dict, what: str) -> bool:
    """Whether partial work recorded with `recorded` (None: there is none) is this job's to resume; when it
    is another job's, say so naming what changed (the caller discards it)."""
    if recorded is None:
        return False
    if canonical(recorded) == canonical(identity):
        return True
    log.warning("%s belongs to another job (changed: %s): starting over", what,
                changed_keys(canonical(recorded), canonical(identity)))
    return False


def read_identity(folder: str | Path) -> dict | None:
    """The identity recorded in a job folder, None when there is none."""
    record = Path(folder) / IDENTITY_FILE
    return json.loads(record.read_text()) if record.exists() else None


def write_identity(folder: str | Path, identity: dict) -> None:
    """Record the job's identity in its folder (atomically: a kill leaves the old record or the new)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    with atomic_file(Path(folder) / IDENTITY_FILE) as tmp:
        tmp.write_text(json.dumps(canonical(identity), indent=2, sort_keys=True) + "\n")
