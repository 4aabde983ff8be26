"""The transfer diagnosis's measurements (benchmarks/transfer_diagnosis.py) against independent computations."""

import importlib.util
from pathlib import Path

import pytest
import torch

from pssl.data.downstream import IGNORE
from pssl.demo.make import scene_look

SPEC = importlib.util.spec_from_file_location(
    "transfer_diagnosis", Path(__file__).parents[1] / "benchmarks" / "transfer_diagnosis.py")
diagnosis = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(diagnosis)


def test_feature_dimension_counts_equal_directions():
    # 4 orthonormal directions with equal variance, embedded in 16 channels: participation ratio 4
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 4, generator=g))[0]
    codes = torch.randn(2000, 4, generator=g)
    codes = (codes - codes.mean(0)) / codes.std(0)
    codes = torch.linalg.qr(codes)[0] * 10  # exactly orthogonal columns of equal norm
    features = (codes @ basis.T).reshape(20, 10, 10, 16).permute(0, 3, 1, 2)
    assert diagnosis.feature_dimension(features) == pytest.approx(4.0, rel=1e-4)


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
    # features that carry nothing about the labels: about chance (one class in three right)
    assert diagnosis.linear_probe((noise[half[0]], labels[half[0]]), (noise[half[1]], labels[half[1]]), 3) < 40


def test_scene_look_shares_classification_looks_below_1000():
    assert [scene_look(a, 6) for a in (0, 5, 6, 9, 1000, 1013)] == [0, 5, 0, 3, 1000, 1013]
