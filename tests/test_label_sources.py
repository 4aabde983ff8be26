"""The pre-training label sources (the method and its controls) against hand computations."""

import numpy as np
import pytest
from PIL import Image

from pssl.data.label_sources import centre_ellipse, derangement, foreground, read_object_mask


@pytest.mark.parametrize("n", [2, 3, 7, 100])
def test_derangement_is_a_permutation_without_fixed_points(n):
    for seed in range(20):
        partner = derangement(n, seed)
        assert sorted(partner.tolist()) == list(range(n))
        assert (partner != np.arange(n)).all()
    assert derangement(2, 0).tolist() == [1, 0]
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_centre_ellipse_by_hand():
    square = centre_ellipse(4, (4, 4))
    assert square.astype(int).tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    # a 4 x 8 map: the ellipse takes the map's proportions, so 8 pixels are the central 2 x 4 block
    wide = centre_ellipse(8, (4, 8))
    assert wide.astype(int).tolist() == [[0] * 8, [0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0], [0] * 8]
    assert not centre_ellipse(0, (4, 4)).any() and centre_ellipse(16, (4, 4)).all()


def test_centre_has_exactly_the_area_of_the_images_own_region():
    rng = np.random.default_rng(0)
    for _ in range(10):
        deciles = rng.integers(0, 10, (24, 24)).astype(np.uint8)
        centre = foreground("centre", deciles, 9)
        assert centre.sum() == (deciles == 9).sum()
        assert centre[12, 12] == 1 and centre[0, 0] == 0  # centred


def test_shuffled_takes_the_partners_region_and_deciles_their_own():
    own, other = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    own[0, 0], other[3, 3] = 9, 9
    assert foreground("deciles", own, 9).tolist() == (own == 9).astype(int).tolist()
    assert foreground("shuffled", own, 9, partner_deciles=other).tolist() == (other == 9).astype(int).tolist()
    with pytest.raises(ValueError, match="label source"):
        foreground("nope", own, 9)


def test_object_masks_in_the_demo_and_the_imagenet_s_layouts(tmp_path):
    binary = np.zeros((4, 4), np.uint8)
    binary[1:3, 1:3] = 255
    Image.fromarray(binary).save(tmp_path / "demo.png")
    assert read_object_mask(tmp_path / "demo.png", 4).tolist() == (binary > 127).astype(int).tolist()
    ids = np.array([[0, 5, 300, 1000]] * 4)  # background, two class ids (one above 255), ignored
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "imagenet_s.png")
    assert read_object_mask(tmp_path / "imagenet_s.png", 4).tolist() == [[0, 1, 1, -1]] * 4
    # resized to the explanation's resolution by nearest neighbour: no value between the layouts' own
    small = read_object_mask(tmp_path / "imagenet_s.png", 2)
    assert small.shape == (2, 2) and set(small.ravel().tolist()) <= {-1, 0, 1}
