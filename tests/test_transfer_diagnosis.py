"""The transfer diagnosis's measurements (benchmarks/transfer_diagnosis.py) against independent computations."""

import importlib.util
from pathlib import Path

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
    assert diagnosis.shared_look_iou(pred, labels, "voc_aug", classes, 6) == \
        pytest.approx(100 * (3 / 7 + 2 / 6 + 2 / 7) / 3)
    # pre-trained on a subset without class 0: only dog is scored, at its index in that subset
    subset = [wnid(k) for k in (1, 2, 3, 4)]
    assert diagnosis.shared_look_iou(pred - 1, labels, "voc_aug", subset, 6) == pytest.approx(100 * 2 / 7)


def test_scene_look_shares_classification_looks_below_1000():
    assert [scene_look(a, 6) for a in (0, 5, 6, 9, 1000, 1013)] == [0, 5, 0, 3, 1000, 1013]
