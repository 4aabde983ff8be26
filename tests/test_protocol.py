"""The paper's protocol, point by point (issue: the paper run, exactly): evaluation split, per-model epochs,
base size / crop convention, OCRNet widths, ImageNet-init backbones, backbone lr and padding label, and the
explanation preprocessing recorded in the store."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import REPO, full_config
from pssl.config import ConfigError, check_config
from pssl.data.downstream import SegmentationSet
from pssl.data.transforms import CropAugment
from pssl.distributed import DistInfo
from pssl.eval.inference import predict, scaled_size
from pssl.models.segmenter import build_segmenter
from pssl.models.weights import load_backbone_weights
from pssl.settings import PretrainSettings, TrainSettings, finetune_settings
from pssl.train.loop import fit
from pssl.train.losses import class_weights

PAPER = full_config(REPO / "presets/paper.yaml")


# ---- a. CamVid is evaluated on its test split ----------------------------------------------------------------

def test_camvid_test_split_is_read_and_the_paper_preset_evaluates_on_it(tiny_demo):
    test = SegmentationSet("camvid", tiny_demo, "test")
    val = SegmentationSet("camvid", tiny_demo, "val")
    assert all("/test/" in str(image) and "/testannot/" in str(label) for image, label in test.pairs)
    assert {p for p, _ in test.pairs}.isdisjoint({p for p, _ in val.pairs})
    assert PAPER["finetune"]["datasets"]["camvid"]["eval_split"] == "test"
    assert {d["eval_split"] for k, d in PAPER["finetune"]["datasets"].items() if k != "camvid"} == {"val"}


def test_ade20k_has_no_annotated_test_split(tiny_demo):
    with pytest.raises(ValueError, match="ade20k has no annotated 'test' split"):
        SegmentationSet("ade20k", tiny_demo, "test")


# ---- b. epochs (and any dataset setting) per model -----------------------------------------------------------

def test_per_model_overrides_apply_to_their_model_only():
    ade = {**PAPER["finetune"]["datasets"]["ade20k"]}
    assert finetune_settings(PAPER, "ade20k", "deeplabv3_resnest50d")[1].epochs == 180
    assert finetune_settings(PAPER, "ade20k", "pspnet_resnet50d")[1].epochs == 100
    assert finetune_settings(PAPER, "ade20k", "ocrnet_hrnet_w18")[1].epochs == 100
    assert finetune_settings(PAPER, "camvid", "deeplabv3_resnest50d")[1].epochs == 30
    assert PAPER["finetune"]["datasets"]["ade20k"] == ade  # the config is not modified


def test_per_model_override_naming_an_unknown_model_is_rejected():
    cfg = {**copy.deepcopy(PAPER), "imagenet_root": "/data/train", "downstream_root": "/data/seg",
           "imagenet_val_root": "/data/val"}
    check_config(cfg)
    cfg["finetune"]["datasets"]["ade20k"]["per_model"] = {"deeplabv3_resnest50": {"epochs": 180}}
    with pytest.raises(ConfigError, match="finetune.datasets.ade20k.per_model.deeplabv3_resnest50"):
        check_config(cfg)


# ---- c. base size: the long side, PyTorch-Encoding's convention -----------------------------------------------

@pytest.mark.parametrize("hw", [(375, 500), (500, 333), (1024, 2048), (360, 480)])
def test_training_scale_draws_the_long_side_in_half_to_twice_base(hw):
    augment = CropAugment(480, mask_fill=255, base_size=520, heavy=False, long_side=True)
    longs = []
    for seed in range(200):
        h, w = augment.resized_size(torch.Generator().manual_seed(seed), *hw)
        long_side, short_side = max(h, w), min(h, w)
        longs.append(long_side)
        assert 260 <= long_side <= 1040
        assert (h >= w) == (hw[0] >= hw[1]) or hw[0] == hw[1]
        assert short_side == int(min(hw) * long_side / max(hw) + 0.5)  # aspect kept, Encoding's rounding
    assert min(longs) < 300 and max(longs) > 1000  # the whole range is drawn


def test_finetune_transform_resizes_image_and_mask_together_then_crops():
    augment = CropAugment(48, mask_fill=255, base_size=64, heavy=False, long_side=True)
    image = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    mask = np.arange(30 * 40).reshape(30, 40) % 7
    out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(3))
    assert out_image.shape == (3, 48, 48) and out_mask.shape == (48, 48)
    assert set(out_mask.unique().tolist()) <= set(range(7)) | {255}  # nearest for masks, padding is ignore


def test_pretraining_keeps_the_short_side_convention():
    augment = CropAugment(256, mask_fill=-1)
    assert (augment.low, augment.high) == (128, 512)
    shorts = [min(augment.resized_size(torch.Generator().manual_seed(s), 375, 500)) for s in range(300)]
    assert 128 <= min(shorts) < 140 and 500 < max(shorts) < 512  # v2.RandomResize's [low, high)


def test_evaluation_scales_are_relative_to_the_base_size():
    assert scaled_size(375, 500, 0.5, 520) == (195, 260)
    assert scaled_size(500, 375, 1.75, 520) == (910, int(375 * 910 / 500 + 0.5))
    assert scaled_size(1024, 2048, 1.0, 1024) == (512, 1024)
    assert scaled_size(100, 80, 0.5) == (50, 40)  # without a base: the image's own size x scale

    class SizeRecorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def forward(self, x):
            self.sizes.append(tuple(x.shape[-2:]))
            return {"out": torch.zeros(1, 3, *x.shape[-2:])}

    model = SizeRecorder()
    pred = predict(model, torch.rand(1, 3, 375, 500), 3, scales=(0.5, 1.0, 1.5), base_size=520)
    assert model.sizes == [(195, 260), (390, 520), (585, 780)] and pred.shape == (375, 500)


# ---- d. OCRNet widths -----------------------------------------------------------------------------------------

def test_ocrnet_uses_the_reference_widths():
    model = build_segmenter("ocrnet", "hrnet_w18_small", 5)
    head = model.head
    assert head.pixel[0].out_channels == 512
    assert head.attention.query[-1][0].out_channels == 256 and head.attention.key[-1][0].out_channels == 256
    assert head.classifier.in_channels == 512


# ---- e. ImageNet-init backbones of the paper preset -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PAPER["pretrain"]["models"]))
def test_paper_backbones_start_from_a_classifier_of_their_own_architecture(name):
    import timm
    entry = PAPER["pretrain"]["models"][name]
    arch, tag = entry["init"].split(".")
    assert arch == entry["backbone"], "the ImageNet weights must be the backbone's own architecture"
    assert not tag.startswith("a1"), "timm's A1 recipe (BCE) transfers worse to dense prediction"
    assert entry["init"] in PAPER["zoo"]["models"] + PAPER["zoo"]["init_only"]
    classifier = timm.create_model(arch, pretrained=False)  # same tensors as the cached pretrained weights
    loaded, expected = load_backbone_weights(build_segmenter(entry["head"], entry["backbone"], 3),
                                             classifier.state_dict())
    assert loaded == expected


# ---- f. backbone lr multiplier and padding label --------------------------------------------------------------

def _one_step_deltas(backbone_lr_mult, tmp_path):
    from ddp_worker import SyntheticSegmentation
    torch.manual_seed(0)
    model = build_segmenter("pspnet", "test_resnet", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # A large lr: the one-step change must stand far above float32 resolution of the weights.
    params = TrainSettings(epochs=1, batch_size=16, lr=20.0, backbone_lr_mult=backbone_lr_mult, momentum=0.9,
                           freeze_bn=True, seed=0)
    model = fit(model, SyntheticSegmentation(n=16), class_weights(3, 2, 0.1), params, tmp_path,
                DistInfo(0, 1, 0, torch.device("cpu")), ignore_index=-1)
    return {k: (v - before[k]) for k, v in model.state_dict().items() if v.is_floating_point()}


def test_backbone_trains_at_its_lr_multiplier(tmp_path):
    full = _one_step_deltas(1.0, tmp_path / "full")
    tenth = _one_step_deltas(0.1, tmp_path / "tenth")
    backbone_weight = "backbone.conv1.0.weight"
    head_weight = next(k for k in full if k.startswith("head.") and k.endswith("weight") and full[k].abs().sum() > 0)
    assert full[backbone_weight].abs().sum() > 0
    torch.testing.assert_close(tenth[backbone_weight], 0.1 * full[backbone_weight], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(tenth[head_weight], full[head_weight], rtol=1e-3, atol=1e-6)


@pytest.fixture
def small_pseudo_set(tmp_path):
    """One 20 x 20 image whose deciles are all 9 (every pixel is class 2), in a real store and label table."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from pssl import store
    from pssl.tables import write_table
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tmp_path / "img.png")
    shard = pd.DataFrame({"image_id": [0], "relpath": ["img.png"], "class_idx": [2]})
    write_table(shard, tmp_path / "shard.parquet", {"root": str(tmp_path)})
    group = store.create_store(tmp_path / "s.zarr", np.array([0]), np.array([2]), 8, 1, False,
                               {"shard_table": str(tmp_path / "shard.parquet")})
    store.write_rows(group, 0, 1, status=np.array([store.DONE]), orig_hw=np.array([[20, 20]]),
                     target=np.array([2]), deciles=np.full((1, 8, 8), 9, np.uint8), model_deciles=None,
                     unreadable={})
    labels = pd.DataFrame({"image_id": [0], "gt_class": [2], "teacher_class": [2], "teacher_conf": [1.0],
                           "label": [2], "keep": [True], "fg_fraction": [1.0]})
    write_table(labels, tmp_path / "labels.parquet", {"root": str(tmp_path), "num_classes": 5})
    return [str(tmp_path / "s.zarr")], [str(tmp_path / "labels.parquet")]


@pytest.mark.parametrize("pad_label, expected", [("ignore", -1), ("background", 5)])
def test_padding_label_of_the_pseudo_labelled_set(small_pseudo_set, pad_label, expected):
    from pssl.data.pseudo import PseudoLabelDataset
    stores, labels = small_pseudo_set
    data = PseudoLabelDataset(stores, labels, num_classes=5, crop=64, pad_label=pad_label)
    seen = set()
    for epoch in range(10):  # the random scale (short side 32..128) leaves the crop padded in about 1 of 3
        data.set_epoch(epoch)
        _, mask = data[0]
        assert mask.shape == (64, 64)
        seen |= set(mask.unique().tolist())
    assert seen == {2, expected}
    with pytest.raises(ValueError, match="pad_label"):
        PseudoLabelDataset(stores, labels, num_classes=5, crop=64, pad_label="zero")


def test_paper_preset_takes_the_authors_code_where_the_paper_is_silent():
    """The defaults are the paper's (and its authors' code where the paper is silent); the demo sets its own."""
    assert PAPER["pretrain"]["backbone_lr_mult"] == TrainSettings().backbone_lr_mult == 0.1
    assert PAPER["pretrain"]["pad_label"] == PretrainSettings().pad_label == "background"
    assert PAPER["finetune"]["backbone_lr_mult"] == 1.0
    demo = full_config(REPO / "config.yaml")
    assert demo["pretrain"]["backbone_lr_mult"] == 1.0 and demo["pretrain"]["pad_label"] == "ignore"


# ---- OCR math sanity: widths do not change the output contract ------------------------------------------------

def test_ocrnet_outputs_at_input_resolution():
    model = build_segmenter("ocrnet", "hrnet_w18_small", 4).train()
    out = model(torch.rand(2, 3, 64, 40))
    assert out["out"].shape == (2, 4, 64, 40) and out["aux"].shape == (2, 4, 64, 40)
    assert math.isfinite(float(out["out"].detach().sum()))
