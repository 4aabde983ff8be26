"""The crop-box augmentation (issue 13): the label maps it makes against torchvision's full-image pipeline for
the same draws, the draws' distribution, resume determinism, and JPEG draft decoding."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pssl.data.images import load_rgb, resize_nearest
from pssl.data.transforms import CropAugment, CropParams, augment

GRID = 56


def blob_grid(seed: int) -> np.ndarray:
    """A decile-like label grid: smooth blobs of the class 7 on background 1000."""
    noise = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    blobs = torch.nn.functional.interpolate(noise, size=(GRID, GRID), mode="bilinear")[0, 0] > 0.5
    return np.where(blobs.numpy(), 7, 1000).astype(np.int64)


def reference_mask(p: CropParams, grid: np.ndarray, hw: tuple[int, int], crop: int, fill: int) -> np.ndarray:
    """The pipeline this replaced, step by step on full-size masks: labels to image size, resize, rotate,
    pad, crop, flip (torchvision)."""
    m = tv_tensors.Mask(torch.from_numpy(resize_nearest(grid, hw)))
    m = F.resize(m, list(p.resized), interpolation=InterpolationMode.NEAREST_EXACT)
    m = F.rotate(m, p.angle, interpolation=InterpolationMode.NEAREST, fill=fill)
    m = F.pad(m, [p.pad[1], p.pad[0], p.pad[1], p.pad[0]], fill=fill)
    m = F.crop(m, p.top, p.left, crop, crop)
    return (F.horizontal_flip(m) if p.flip else m).numpy()


def warped_mask(augment_: CropAugment, p: CropParams, grid: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    return augment_.warp_mask(grid, np.diag([grid.shape[1] / w, grid.shape[0] / h, 1.0])
                              @ augment_.crop_to_source(p, h, w))


# 120 x 90 is often smaller than the crop: padded, and a one-pixel band along the rotated image's border is
# fill on one side and label on the other (torchvision's fill mask rounds there), which weighs more in a
# small image
@pytest.mark.parametrize("hw, mean_agreement", [((375, 500), 0.98), ((500, 333), 0.98), ((120, 90), 0.97)])
def test_label_maps_match_the_full_image_pipeline(hw, mean_agreement):
    augment_ = CropAugment(128, mask_fill=-1)
    agreement = []
    for seed in range(40):
        p = augment_.sample(torch.Generator().manual_seed(seed), *hw)
        grid = blob_grid(seed)
        new, old = warped_mask(augment_, p, grid, hw), reference_mask(p, grid, hw, 128, -1)
        assert set(np.unique(new)) <= {7, 1000, -1}
        agreement.append((new == old).mean())
    # one nearest-neighbour lookup instead of four in a row: only pixels on label edges can differ
    assert np.mean(agreement) > mean_agreement and min(agreement) > 0.95, agreement


def test_image_and_labels_are_exact_where_no_resampling_happens():
    augment_ = CropAugment(64, mask_fill=-1)
    labels = np.random.default_rng(0).integers(0, 5, (100, 150))
    rgb = np.random.default_rng(1).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    for flip in (False, True):
        p = CropParams((100, 150), 0.0, (0, 0), top=17, left=40, flip=flip, blur_sigma=None, jitter=None)
        expected, pixels = labels[17:81, 40:104], rgb[17:81, 40:104]
        assert np.array_equal(warped_mask(augment_, p, labels, (100, 150)), expected[:, ::-1] if flip else expected)
        warped = augment_.warp_image(rgb, augment_.crop_to_source(p, 100, 150))
        assert np.array_equal(warped, pixels[:, ::-1] if flip else pixels)


@pytest.mark.parametrize("op, value", [("brightness", 1.25), ("contrast", 0.72), ("saturation", 1.3),
                                       ("hue", 0.017), ("hue", -0.02), ("hue", 0.45)])
def test_colour_jitter_is_torchvisions(op, value):
    import pssl.data.transforms as T
    image = np.random.default_rng(2).random((40, 50, 3)).astype(np.float32)
    image[:5, :5] = 0.5  # grey: no hue
    image[10:15, 10:15, 1] = image[10:15, 10:15, 0]  # ties between channels
    ours = getattr(T, f"adjust_{op}")(image, value)
    theirs = getattr(F, f"adjust_{op}")(torch.from_numpy(image).permute(2, 0, 1), value).permute(1, 2, 0).numpy()
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("sigma", [0.1, 0.8, 1.5])
def test_blur_is_torchvisions(sigma):
    from pssl.data.transforms import gaussian_blur
    image = np.random.default_rng(3).random((30, 40, 3)).astype(np.float32)
    theirs = F.gaussian_blur(torch.from_numpy(image).permute(2, 0, 1), [5, 5], [sigma, sigma])
    assert np.abs(gaussian_blur(image, sigma) - theirs.permute(1, 2, 0).numpy()).max() < 1e-5


def test_the_draws_follow_torchvision_ranges():
    augment_ = CropAugment(256, mask_fill=-1)
    params = [augment_.sample(torch.Generator().manual_seed(s), 375, 500) for s in range(400)]
    angles = np.array([p.angle for p in params])
    assert angles.min() >= -10 and angles.max() <= 10 and abs(angles.mean()) < 1.5
    assert 0.4 < np.mean([p.flip for p in params]) < 0.6
    assert 0.22 < np.mean([p.blur_sigma is not None for p in params]) < 0.38
    jitter = np.array([p.jitter for p in params])
    assert (jitter[:, :3] >= 0.7).all() and (jitter[:, :3] <= 1.3).all() and (np.abs(jitter[:, 3]) <= 0.02).all()
    for p in params:
        rh, rw = p.resized
        assert 0 <= p.top <= rh + 2 * p.pad[0] - 256 and 0 <= p.left <= rw + 2 * p.pad[1] - 256


def test_the_same_sample_gives_the_same_crop_and_another_epoch_another(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.JPEG", quality=95)
    augment_, grid = CropAugment(96, mask_fill=-1), blob_grid(0)
    first = augment(augment_, tmp_path / "a.JPEG", grid, 0, 3, 5)
    again = augment(augment_, tmp_path / "a.JPEG", grid, 0, 3, 5)
    other = augment(augment_, tmp_path / "a.JPEG", grid, 0, 4, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert first[0].dtype == torch.float32 and 0 <= float(first[0].min()) and float(first[0].max()) <= 1


def test_a_path_decodes_at_reduced_scale_and_looks_like_the_full_decode(tmp_path):
    yy, xx = np.mgrid[0:768, 0:1024]
    smooth = np.stack([xx / 4, yy / 3, (xx + yy) / 7], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.JPEG", quality=95)
    assert load_rgb(tmp_path / "big.JPEG", min_size=(200, 150)).shape == (192, 256, 3)  # 1/4: still >= 200 x 150
    assert load_rgb(tmp_path / "big.JPEG", min_size=(600, 400)).shape == (768, 1024, 3)  # 1/2 would be too small
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "cmyk.JPEG")
    assert load_rgb(tmp_path / "cmyk.JPEG", min_size=(200, 150)).shape[2] == 3
    augment_ = CropAugment(128, mask_fill=-1, heavy=False)
    p = augment_.sample(torch.Generator().manual_seed(0), 768, 1024)
    g = torch.Generator().manual_seed(0)
    from_path, _ = augment_(tmp_path / "big.JPEG", blob_grid(0), g)
    from_array, _ = augment_(load_rgb(tmp_path / "big.JPEG"), blob_grid(0), torch.Generator().manual_seed(0))
    assert p.resized[0] < 768  # the draw downscales, so the draft decode is used
    assert float((from_path - from_array).abs().mean()) < 0.02  # same picture, within JPEG's DCT scaling
