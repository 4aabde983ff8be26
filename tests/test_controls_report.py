"""The controls section beside Table 3, against a hand computation."""

import math

import pandas as pd

from pssl.report.controls import controls_table, verdicts, write_controls

# one model, two datasets, 3 seeds; per seed the mIoU of each init
RUNS = {  # (dataset, init) -> mIoU of seeds 0, 1, 2
    ("camvid", "imagenet"): [50.0, 52.0, 51.0],
    ("camvid", "pssl"): [51.0, 53.5, 52.0],          # diffs 1.0, 1.5, 1.0
    ("camvid", "pssl-oracle"): [55.0, 57.0, 56.0],   # diffs 5, 5, 5: sd 0, interval 0
    ("camvid", "pssl-shuffled"): [49.0, 50.0, 49.0],  # diffs -1, -2, -2
    ("voc_aug", "imagenet"): [20.0, 22.0, 24.0],
    ("voc_aug", "pssl"): [19.0, 23.0, 23.0],          # diffs -1, 1, -1
    ("voc_aug", "pssl-oracle"): [21.0, 22.0, 26.0],   # diffs 1, 0, 2
    ("voc_aug", "pssl-shuffled"): [20.0, 21.0, 23.0],  # diffs 0, -1, -1
}


def cells():
    return pd.DataFrame([{"dataset": d, "model": "psp", "init": i, "seed": s, "miou": v}
                         for (d, i), values in RUNS.items() for s, v in enumerate(values)])


def test_each_control_is_its_paired_difference_to_imagenet():
    table = controls_table(cells(), {"psp": "PSPNet"}).set_index("dataset")
    assert list(table.columns[:2]) == ["model", "ImageNet"] and table.loc["CamVid", "ImageNet"] == 51.0
    assert math.isclose(table.loc["CamVid", "PSSL"], 3.5 / 3)
    # t interval of (1, 1.5, 1): sd = 0.2887, t_{0.975,2} = 4.303, half-width 4.303 * 0.2887 / sqrt(3)
    assert math.isclose(table.loc["CamVid", "PSSL ci95"], 4.303 * (1 / 12) ** 0.5 / 3 ** 0.5, rel_tol=1e-4)
    assert table.loc["CamVid", "oracle"] == 5.0 and table.loc["CamVid", "oracle ci95"] == 0.0
    assert math.isclose(table.loc["VOC-Aug", "shuffled"], -2 / 3)
    assert "centre" not in table  # a control that did not run is left out


def test_one_sentence_per_model_places_pssl_between_the_controls():
    sentence, _ = verdicts(controls_table(cells(), {"psp": "PSPNet"}))
    # PSSL above shuffled in both cells, below oracle in both; oracle's camvid interval (0 wide) excludes zero
    assert sentence.startswith("PSPNet: PSSL is above shuffled in 2/2, below oracle in 2/2")
    assert "oracle beats ImageNet with an interval excluding zero in 1/2 cells (loses so in 0)" in sentence


def test_the_positive_control_needs_most_cells_per_model():
    table = controls_table(cells(), {"psp": "PSPNet"})
    # the oracle's gain excludes zero in 1 of 2 cells: not most, so these cells cannot measure a gain
    assert verdicts(table)[-1].startswith("PSPNet: the positive control fails: the oracle beats ImageNet init with "
                                          "an interval excluding zero in only 1 of the 2 cells where it ran")
    table.loc[table["dataset"] == "VOC-Aug", "oracle excludes 0"] = True
    assert verdicts(table)[-1].startswith("PSPNet: the positive control holds: ") and "1 of the 2" not in \
        verdicts(table)[-1] and "in 2 of the 2 cells" in verdicts(table)[-1]
    # without an oracle column there is nothing to say
    assert len(verdicts(controls_table(cells()[cells()["init"] != "pssl-oracle"], {"psp": "PSPNet"}))) == 1


def test_the_positive_control_counts_the_cells_where_the_oracle_ran_and_needs_two_seeds():
    runs = cells()
    # the oracle ran on CamVid only (diffs 5, 5, 5): 1 of 1 cells
    table = controls_table(runs[~((runs["init"] == "pssl-oracle") & (runs["dataset"] == "voc_aug"))],
                           {"psp": "PSPNet"})
    assert "holds" in verdicts(table)[-1] and "in 1 of the 1 cells where it ran" in verdicts(table)[-1]
    # one seed: no interval, no verdict either way, even for a large gain
    one = controls_table(runs[runs["seed"] == 0], {"psp": "PSPNet"})
    assert verdicts(one)[-1] == ("PSPNet: the positive control cannot be judged with one seed (paired intervals "
                                 "need at least 2; make demo-controls runs 3).")
    # one verdict per model
    two = pd.concat([runs, runs.assign(model="ocr")])
    assert [v.split(":")[0] for v in verdicts(controls_table(two, {"psp": "PSPNet", "ocr": "OCRNet"}))[-2:]] == \
        ["PSPNet", "OCRNet"]


def test_files_only_when_a_control_ran(tmp_path):
    assert write_controls(cells()[cells()["init"].isin(["imagenet", "pssl"])], tmp_path, {}) is None
    md = write_controls(cells(), tmp_path, {"psp": "PSPNet"})
    assert "| PSPNet | CamVid | 51.00 |" in md and "+5.00 ± 0.00 *" in md
    assert (tmp_path / "controls.csv").exists() and (tmp_path / "controls.png").stat().st_size > 0
