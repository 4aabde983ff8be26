"""pssl.job_state: the one resume rule of explain stores, training checkpoints and teacher labels."""

import logging

from pssl.job_state import canonical, changed_keys, read_identity, resumable, write_identity


def test_the_same_identity_resumes_as_it_reads_back_from_json(tmp_path):
    identity = {"train": {"lr": 0.01, "scales": (1.0, 1.5)}, "data": "abc"}
    write_identity(tmp_path, identity)
    recorded = read_identity(tmp_path)
    assert recorded == {"data": "abc", "train": {"lr": 0.01, "scales": [1.0, 1.5]}} == canonical(identity)
    assert resumable(recorded, identity, "x")


def test_another_jobs_work_is_refused_naming_what_changed(caplog):
    recorded = {"train": {"lr": 0.01, "epochs": 3}, "data": "abc"}
    with caplog.at_level(logging.WARNING):
        assert not resumable(recorded, {"train": {"lr": 0.02, "epochs": 3}, "data": "abd"}, "ckpt.pt")
    assert "ckpt.pt belongs to another job (changed: data, train.lr): starting over" in caplog.text
    assert changed_keys({}, {"a": 1}) == "nothing recorded: an older release"


def test_no_partial_work_is_nothing_to_resume(tmp_path):
    assert read_identity(tmp_path) is None and not resumable(None, {"a": 1}, "x")
