"""The paper's peak lr search (pssl.lr_search) on scripted val curves, against an exhaustive search."""

import json
import math
import re

import numpy as np
import pytest

from pssl.lr_search import cell_lrs, decide, every_lr, first_round, read_round, write_round
from pssl.report.figure4 import lr_curves, write_figure4

LADDER = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05]  # the paper preset's


def search(curve: dict[float, float], start: float = 0.01, margin: float = 0.0, max_values: int = 9,
           ladder=LADDER) -> tuple[list[float], float, int]:
    """Run rounds until the search stops: (lrs tried, the best, rounds)."""
    tried, rounds = {}, 0
    while True:
        decision = decide(ladder, start, tried, margin, max_values)
        if decision.done:
            return sorted(tried), decision.best, rounds
        tried.update({lr: curve[lr] for lr in decision.next})
        rounds += 1


def curve_of(values) -> dict[float, float]:
    return dict(zip(LADDER, map(float, values)))


def test_the_first_round_is_the_start_and_its_neighbours():
    assert first_round(LADDER, 0.01) == (0.005, 0.01, 0.02)
    assert first_round(LADDER, 0.05) == (0.02, 0.05)  # the ladder's end: one neighbour
    assert first_round(LADDER, 0.0001) == (0.0001, 0.0002)


def test_a_peak_inside_the_ladder_is_walked_to_and_stops_at_a_clear_peak():
    curve = curve_of([10, 20, 30, 40, 55, 50, 45, 40, 30])  # peak at 0.002, start 0.01
    tried, best, rounds = search(curve)
    assert best == 0.002
    # 0.005/0.01/0.02, then 0.002 (the low end was the best), then 0.001 (0.002 was the new low end): clear
    assert tried == [0.001, 0.002, 0.005, 0.01, 0.02] and rounds == 3


def test_the_first_round_already_brackets_the_peak():
    tried, best, rounds = search(curve_of([1, 2, 3, 4, 5, 6, 9, 7, 1]))
    assert (tried, best, rounds) == ([0.005, 0.01, 0.02], 0.01, 1)


def test_a_peak_at_the_ladders_end_stops_there():
    curve = curve_of(range(9))  # rising to 0.05
    tried, best, _ = search(curve)
    assert best == 0.05 and tried == [0.005, 0.01, 0.02, 0.05]
    tried, best, _ = search(curve_of(range(9, 0, -1)), start=0.0005)  # falling: the low end
    assert best == 0.0001 and tried == [0.0001, 0.0002, 0.0005, 0.001]


def test_a_flat_curve_spends_the_budget_and_keeps_the_start():
    tried, best, _ = search(curve_of([30] * 9), max_values=5)
    assert len(tried) == 5 and best == 0.01
    assert tried == [0.002, 0.005, 0.01, 0.02, 0.05]  # both ends were tied with the best: both extended


def test_ties_go_to_the_lr_nearer_the_start_and_the_last_rung_to_the_higher_end():
    # 0.005 ties with the start 0.01: the best is the start; 0.005 is not clearly worse, so the search goes on
    # down to 0.002 (worse), and 0.02 is worse: done.
    tried, best, _ = search(curve_of([0, 0, 0, 0, 40, 50, 50, 45, 0]))
    assert best == 0.01 and tried == [0.002, 0.005, 0.01, 0.02]
    # one rung left and both ends tied with the best: the end with the higher mIoU (here equal: the smaller lr)
    decision = decide(LADDER, 0.01, {0.005: 50.0, 0.01: 50.0, 0.02: 50.0}, max_values=4)
    assert decision.next == (0.002,)
    decision = decide(LADDER, 0.01, {0.005: 49.0, 0.01: 50.0, 0.02: 50.0}, max_values=4)
    assert decision.next == (0.05,)
    # both ends inside the peak and one rung left: it goes past the end with the higher mIoU, either side
    decision = decide(LADDER, 0.01, {0.005: 49.8, 0.01: 50.0, 0.02: 50.0}, margin=0.5, max_values=4)
    assert decision.next == (0.05,)
    decision = decide(LADDER, 0.01, {0.005: 50.0, 0.01: 50.0, 0.02: 49.8}, margin=0.5, max_values=4)
    assert decision.next == (0.002,)


def test_the_margin_says_what_a_clearly_worse_neighbour_is():
    curve = curve_of([0, 0, 0, 0, 40, 49.7, 50, 45, 0])
    assert search(curve, margin=0.0)[0] == [0.005, 0.01, 0.02]  # 0.005 is worse: a clear peak at 0.01
    tried, best, _ = search(curve, margin=0.5)  # 0.005 is within 0.5 points: not clearly worse, go on
    assert tried == [0.002, 0.005, 0.01, 0.02] and best == 0.01


def test_the_search_stops_at_a_clear_peak_even_beside_a_second_one():
    """The peak is the best and its neighbours; a rung further out that would tie the best is not looked for
    (the paper stopped at the first clear peak)."""
    curve = curve_of([0, 0, 0, 0, 60.0, 58.0, 60.3, 58.0, 0])
    tried, best, _ = search(curve, margin=0.5)
    assert tried == [0.005, 0.01, 0.02] and best == 0.01


def test_a_diverged_run_counts_as_worse_than_any():
    tried, best, _ = search(curve_of([0, 0, 0, 0, 10, 20, 30, math.nan, 0]))
    assert best == 0.01 and tried == [0.005, 0.01, 0.02]
    tried, best, _ = search(curve_of([0, 0, 0, 0, 10, 20, math.nan, math.nan, 0]))  # the start diverged
    assert best == 0.005 and tried == [0.002, 0.005, 0.01, 0.02]
    tried, best, _ = search(curve_of([math.nan] * 9), margin=0.5)  # every run diverged: no peak to walk
    assert tried == [0.005, 0.01, 0.02] and best == 0.01


def test_max_values_bounds_every_search():
    rng = np.random.default_rng(0)
    for _ in range(200):
        tried, best, _ = search(curve_of(rng.normal(size=9)), start=float(rng.choice(LADDER)),
                                margin=float(rng.uniform(0, 1)), max_values=int(rng.integers(2, 9)))
        assert len(tried) <= 8 and best in tried


def test_on_unimodal_curves_the_search_finds_the_exhaustive_argmax():
    """The independent computation: the grid's argmax, and the stretch a walk from the start must cover (the
    first round's three rungs, widened to one rung past the peak, clipped to the ladder)."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        peak, start = int(rng.integers(0, 9)), int(rng.integers(0, 9))
        curve = curve_of([100 - 5 * abs(i - peak) - rng.uniform(0, 1) * (i != peak) for i in range(9)])
        tried, best, _ = search(curve, start=LADDER[start])
        assert best == max(curve, key=curve.get) == LADDER[peak]
        low, high = max(0, min(start - 1, peak - 1)), min(8, max(start + 1, peak + 1))
        assert tried == LADDER[low:high + 1]


def test_a_round_reads_runs_and_writes_its_decision(tmp_path):
    runs = []
    for lr, miou in ((0.005, 0.30), (0.01, 0.35), (0.02, 0.40)):
        path = tmp_path / f"lr{lr}" / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"lr": lr, "selection": {"split": "val", "miou": miou}}))
        runs.append(str(path))
    decision = write_round(runs, LADDER, 0.01, 0.5, 5, str(tmp_path / "round0.json"))
    assert decision.next == (0.05,) and decision.best == 0.02
    assert read_round(str(tmp_path / "round0.json")) == decision
    record = json.loads((tmp_path / "round0.json").read_text())
    assert record["tried"] == {"0.005": 30.0, "0.01": 35.0, "0.02": 40.0}
    assert record | {"tried": None} == {"ladder": LADDER, "start": 0.01, "margin": 0.5, "max_values": 5,
                                        "tried": None, "next": [0.05], "best": 0.02}
    # the round's budget is the one given: 3 lrs tried of at most 3, nothing more
    assert write_round(runs, LADDER, 0.01, 0.5, 3, str(tmp_path / "round1.json")).done


def test_a_start_off_the_ladder_or_an_unsorted_ladder_is_refused():
    with pytest.raises(ValueError, match="not on the ladder"):
        decide(LADDER, 0.003, {})
    with pytest.raises(ValueError, match="ascending"):
        decide([0.01, 0.001], 0.01, {})
    with pytest.raises(ValueError, match="one stretch"):
        decide(LADDER, 0.01, {0.005: 1.0, 0.02: 2.0})


def test_the_lrs_a_cell_trains_up_front_and_every_lr_the_config_can_name():
    assert cell_lrs("fixed", LADDER, 0.01) == [0.01]
    assert cell_lrs("grid", LADDER, 0.01) == LADDER and cell_lrs("grid", [], 0.01) == [0.01]
    assert cell_lrs("peak", LADDER, 0.01) == [0.005, 0.01, 0.02]
    config = {"finetune": {"lr": 0.01, "lr_grid": [0.02], "datasets": {
        "camvid": {"lr": 0.005, "per_model": {"psp": {"lr": 0.001}}}, "ade20k": {}}}}
    assert every_lr(config) == [0.001, 0.005, 0.01, 0.02]


def test_figure4_lists_every_lr_tried_and_marks_the_kept_one(tmp_path):
    cells = []
    for init, tried, kept in (("imagenet", {"0.005": 0.30, "0.01": 0.35, "0.02": 0.32}, 0.01),
                              ("pssl", {"0.01": 0.25}, 0.01)):  # a fixed-lr cell: one row, not drawn
        path = tmp_path / f"finetune/camvid/psp/{init}/seed0/metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"lr": kept, "selection": {"split": "val", "miou": tried[str(kept)]},
                                    "lrs_tried": tried,
                                    "cell": {"dataset": "camvid", "model": "psp", "init": init, "seed": 0}}))
        cells.append(str(path))
    curves = lr_curves(cells)
    assert list(curves["init"]) == ["imagenet"] * 3 + ["pssl"]
    assert list(curves["val_miou"]) == pytest.approx([30.0, 35.0, 32.0, 25.0])
    assert list(curves["kept"]) == [False, True, False, True]
    markdown = write_figure4(cells, tmp_path / "report", {"psp": "PSPNet"})
    assert "1 of 2 cells and seeds tried more than one lr" in markdown
    for name in ("figure4.csv", "figure4.png", "figure4.svg"):
        assert (tmp_path / "report" / name).stat().st_size > 0


CELL = "results/finetune/camvid/psp/imagenet"
# margin 1000: every end of the stretch is "not clearly worse", so the search's shape is known up front (round
# 0: 0.005, 0.01, 0.02; round 1: the one rung max_values leaves, at the higher end) whatever the tiny runs score.
PEAK = ("finetune={lr_search: {mode: peak, margin: 1000, max_values: 4, seeds: first}, "
        "lr_grid: [0.002, 0.005, 0.01, 0.02, 0.05], seeds: [0, 1]}")


@pytest.mark.e2e
def test_the_peak_search_grows_the_dag_resumes_after_a_kill_and_the_other_seed_trains_its_choice(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from conftest import run_snakemake, snakemake_command, snakemake_env

    targets = [f"{CELL}/seed0/metrics.json", f"{CELL}/seed1/metrics.json"]
    dry = run_snakemake(tmp_path, "-n", *targets, "--config", PEAK).stdout
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", dry[dry.index("Job stats:"):], re.MULTILINE))
    assert (planned["finetune"], planned["lr_search"], planned["select_lr"]) == ("3", "1", "2")  # round 0 only
    assert "alteration of the DAG" in dry

    proc = subprocess.Popen(snakemake_command(tmp_path, *targets, "--config", PEAK), cwd=tmp_path,
                            env=snakemake_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    round0 = tmp_path / f"{CELL}/seed0/lr_search/round0.json"
    deadline = time.time() + 600
    while not round0.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert round0.exists(), "round 0 never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # mid-search: round 1's run has started (or is about to)
    proc.wait()
    first = {lr: (tmp_path / f"{CELL}/seed0/lr{lr}/metrics.json").stat().st_mtime_ns for lr in (0.005, 0.01, 0.02)}

    run_snakemake(tmp_path, "--unlock", *targets, "--config", PEAK)  # as Snakemake asks after a kill
    run_snakemake(tmp_path, *targets, "--config", PEAK)
    assert {lr: (tmp_path / f"{CELL}/seed0/lr{lr}/metrics.json").stat().st_mtime_ns for lr in first} == first
    rounds = [read_round(str(tmp_path / f"{CELL}/seed0/lr_search/round{r}.json")) for r in (0, 1)]
    assert not (tmp_path / f"{CELL}/seed0/lr_search/round2.json").exists()
    assert sorted(rounds[0].tried) == [0.005, 0.01, 0.02] and len(rounds[0].next) == 1
    assert sorted(rounds[1].tried) == sorted([*rounds[0].tried, *rounds[0].next]) and rounds[1].done
    low, high = rounds[0].tried[0.005], rounds[0].tried[0.02]
    assert rounds[0].next == ((0.05,) if high > low else (0.002,))  # the one rung left: the higher end's side
    kept = json.loads((tmp_path / f"{CELL}/seed0/metrics.json").read_text())
    assert kept["lr"] == rounds[1].best == max(rounds[1].tried, key=rounds[1].tried.get)
    assert {float(k): 100 * v for k, v in kept["lrs_tried"].items()} == pytest.approx(rounds[1].tried)
    assert sorted(p.name for p in (tmp_path / f"{CELL}/seed0").glob("lr0*")) == \
        sorted(f"lr{lr}" for lr in rounds[1].tried)
    # seeds: first: the other seed trains the first seed's choice alone
    assert [p.name for p in (tmp_path / f"{CELL}/seed1").glob("lr0*")] == [f"lr{rounds[1].best}"]
    again = run_snakemake(tmp_path, "-n", *targets, "--config", PEAK)
    assert "Nothing to be done" in again.stdout + again.stderr
