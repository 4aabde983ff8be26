"""scripts/compare_runs.py: the before / after check of a refactor."""

import importlib.util
import json

from conftest import REPO

spec = importlib.util.spec_from_file_location("compare_runs", REPO / "scripts/compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)

JOB = "[Sun Dec  6 09:50:14 2026]\nrule {rule}:\n    jobid: {jobid}\n    reason: {reason}\nShell command: pssl {cmd}\n"


def test_plans_match_in_any_order_and_a_changed_command_is_named(tmp_path, capsys):
    before, after, changed = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    before.write_text(JOB.format(rule="x", jobid=1, reason="a", cmd="x 1") + "\n" + JOB.format(rule="y", jobid=2,
                                                                                                reason="b", cmd="y"))
    after.write_text(JOB.format(rule="y", jobid=7, reason="c", cmd="y") + "\n" + JOB.format(rule="x", jobid=8,
                                                                                             reason="d", cmd="x 1"))
    changed.write_text(JOB.format(rule="y", jobid=7, reason="c", cmd="y") + "\n" + JOB.format(rule="x", jobid=8,
                                                                                               reason="d", cmd="x 2"))
    assert compare_runs.compare_plans(before, after) == 0
    assert compare_runs.compare_plans(before, changed) == 1
    assert "only after: 1 x rule x:" in capsys.readouterr().out


def test_results_differing_in_time_or_place_only_are_the_same(tmp_path, capsys):
    for run, seconds in (("a", 5.2), ("b", 6.1)):
        folder = tmp_path / run / "results"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"miou": 40.1, "seconds": seconds,
                                                         "root": str(tmp_path / run / "data")}))
        (folder / "same.txt").write_text("x")
        (tmp_path / run / "data").mkdir()
    assert compare_runs.compare_results(tmp_path / "a", tmp_path / "b") == 0
    (tmp_path / "b/results/metrics.json").write_text(json.dumps({"miou": 40.2, "seconds": 1.0}))
    assert compare_runs.compare_results(tmp_path / "a", tmp_path / "b") == 1
    assert "results/metrics.json" in capsys.readouterr().out
