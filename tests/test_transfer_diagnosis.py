"""The transfer diagnosis's measurements (benchmarks/transfer_diagnosis.py) against independent computations."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pssl.data.downstream import DATASETS, IGNORE
from pssl.demo.make import scene_look, wnid

SPEC = importlib.util.spec_from_file_location(
    "transfer_diagnosis", Path(__file__).parents[1] / "benchmarks" / "transfer_diagnosis.py")
diagnosis = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(diagnosis)


def test_feature_dimension_is_the_participation_ratio_of_the_centred_spectrum():
    # two exactly orthogonal zero-mean directions with norms 3 and 1, embedded in 16 channels, plus an offset
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 2, generator=g))[0]
    codes = torch.randn(2000, 2, generator=g)
    codes = torch.linalg.qr(codes - codes.mean(0))[0] * torch.tensor([3.0, 1.0])
    flat = codes @ basis.T + 5.0  # the offset must not count (centred)
    features = flat.reshape(20, 10, 10, 16).permute(0, 3, 1, 2)
    # s^2 = 9, 1: (9 + 1)^2 / (81 + 1)
    assert diagnosis.feature_dimension(features) == pytest.approx(100 / 82, rel=1e-4)


def test_pixels_downsample_labels_nearest_and_drop_ignore():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGNORE, IGNORE], [2, 2, IGNORE, IGNORE]],
                           [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]])
    x, y = diagnosis.pixels(features, labels)
    assert y.tolist() == [0, 1, 2, 1, 1, 0, 0]
    assert x[2].tolist() == features[0, :, 1, 0].tolist() and x[3].tolist() == features[1, :, 0, 0].tolist()


def test_linear_probe_separates_what_the_features_encode():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (8, 6, 6), generator=g)
    noise = torch.randn(8, 5, 6, 6, generator=g)
    informative = noise.clone()
    informative[:, :3] += 10 * torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2)
    half = slice(0, 4), slice(4, 8)
    assert diagnosis.linear_probe((informative[half[0]], labels[half[0]]), (informative[half[1]], labels[half[1]]),
                                  3) == pytest.approx(100.0)
    # ignored train pixels are left out of the fit (cross entropy would reject label 255)
    train_labels = labels[half[0]].clone()
    train_labels[:, 0] = IGNORE
    assert diagnosis.linear_probe((informative[half[0]], train_labels), (informative[half[1]], labels[half[1]]),
                                  3) == pytest.approx(100.0)
    # features that carry nothing about the labels: about chance (one class in three right)
    assert diagnosis.linear_probe((noise[half[0]], labels[half[0]]), (noise[half[1]], labels[half[1]]), 3) < 40


def test_shared_look_iou_against_a_hand_count():
    voc = DATASETS["voc_aug"].classes
    aeroplane, cat, dog = voc.index("aeroplane"), voc.index("cat"), voc.index("dog")  # demo looks 0, 6 -> 0, 4
    labels = torch.tensor([[[aeroplane] * 4, [cat, cat, IGNORE, IGNORE], [dog] * 4, [0] * 4]])
    pred = torch.tensor([[[0, 0, 0, 5], [0, 0, 0, 0], [4, 4, 1, 1], [0, 4, 4, 4]]])
    classes = [wnid(k) for k in range(6)]
    # aeroplane: 3 of a union of 7 (class 0 said on 6 valid pixels); cat (the same look): 2 / 6; dog: 2 / 7
    voc_demo = diagnosis.Target("voc_aug", "", DATASETS["voc_aug"].demo, "voc_aug")
    assert diagnosis.shared_look_iou(pred, labels, voc_demo, classes, 6) == \
        pytest.approx(100 * (3 / 7 + 2 / 6 + 2 / 7) / 3)
    # pre-trained on a subset without class 0: only dog is scored, at its index in that subset
    subset = [wnid(k) for k in (1, 2, 3, 4)]
    assert diagnosis.shared_look_iou(pred - 1, labels, voc_demo, subset, 6) == pytest.approx(100 * 2 / 7)


def test_scene_look_shares_classification_looks_below_1000():
    assert [scene_look(a, 6) for a in (0, 5, 6, 9, 1000, 1013)] == [0, 5, 0, 3, 1000, 1013]


def test_the_in_domain_voc_draws_every_class_in_a_pre_training_look(tmp_path):
    """The first 6 of VOC-Aug's demo classes, each in the look of classification class 0..5 (drawn as that
    class's appearance: its hue and texture), as many images as the demo's VOC-Aug, readable as VOC-Aug, and
    written again when the demo's settings change."""
    from pssl.config import load_config
    from pssl.data.downstream import SegmentationSet
    from pssl.demo import synth
    config, _ = load_config([str(Path(__file__).parents[1] / "config.yaml")],
                            ["demo={downstream_train: 8, downstream_val: 2}"], check=False)
    target = diagnosis.in_domain_voc(tmp_path / "voc", config)
    kept = DATASETS["voc_aug"].demo.classes[:6]
    assert target.scenes.classes == tuple((name, False, look) for look, (name, _, _) in enumerate(kept))
    train, val = SegmentationSet("voc_aug", target.root, "train"), SegmentationSet("voc_aug", target.root, "val")
    assert (len(train), len(val)) == (8, 2)
    voc = DATASETS["voc_aug"].classes
    seen = set()
    for i in range(len(train)):
        rgb, label = train.read(i)
        for look, (name, _, _) in enumerate(kept):
            mask = (label == voc.index(name))
            if mask.sum() > 50:  # the object's median hue is its look's (background clutter has any hue)
                hue = np.median(rgb_to_hsv(rgb[mask])[:, 0])
                assert min(abs(hue - synth.appearance(look).hue), 1 - abs(hue - synth.appearance(look).hue)) < 0.06
                seen.add(name)
        assert set(np.unique(label)) <= {voc.index(n) for n, _, _ in kept} | {0, IGNORE}
    assert len(seen) >= 3, seen  # classes whose look moved (only aeroplane's, 0, is the demo's own)
    assert diagnosis.in_domain_voc(tmp_path / "voc", config) == target  # written once
    fewer, _ = load_config([str(Path(__file__).parents[1] / "config.yaml")],
                           ["demo={downstream_train: 8, downstream_val: 3}"], check=False)
    diagnosis.in_domain_voc(tmp_path / "voc", fewer)  # other settings: written again
    assert len(SegmentationSet("voc_aug", target.root, "val")) == 3


def rgb_to_hsv(pixels: np.ndarray) -> np.ndarray:
    import colorsys
    return np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in pixels])


def test_paired_gains_against_a_hand_computation():
    """Under a protocol factor ImageNet init ran too, the gain is against that run; otherwise against the DAG's."""
    rows = []
    for seed, (base, tenx, pssl_base, pssl_tenx) in enumerate([(40, 42, 38, 45), (44, 45, 41, 48), (42, 40, 40, 44)]):
        rows += [{"set": "camvid", "seed": seed, "init": "imagenet", "factor": "-", "miou": base},
                 {"set": "camvid", "seed": seed, "init": "imagenet", "factor": "x10", "miou": tenx},
                 {"set": "camvid", "seed": seed, "init": "pssl oracle", "factor": "dag", "miou": pssl_base},
                 {"set": "camvid", "seed": seed, "init": "pssl oracle", "factor": "x10", "miou": pssl_tenx}]
    gains = diagnosis.paired_gains(pd.DataFrame(rows)).set_index("factor")
    dag, tenx = np.array([38 - 40, 41 - 44, 40 - 42]), np.array([45 - 42, 48 - 45, 44 - 40])
    for factor, d in (("dag", dag), ("x10", tenx)):
        assert gains.loc[factor, "diff"] == pytest.approx(d.mean())
        assert gains.loc[factor, "ci95"] == pytest.approx(4.303 * d.std(ddof=1) / np.sqrt(3))
    assert gains.loc["x10", "excludes_zero"] and gains.loc["dag", "excludes_zero"]
