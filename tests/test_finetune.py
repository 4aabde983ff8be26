"""Downstream: loaders, metrics, inference, PSSL-init loading, lr selection and the Table 3 layout."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from conftest import REPO
from pssl.data.downstream import SegmentationSet, list_pairs
from pssl.eval.inference import predict, sliding_window
from pssl.eval.metrics import confusion_matrix, scores
from pssl.models.segmenter import build_segmenter
from pssl.models.weights import init_from_pretrained
from pssl.report.lr_grid import select_best_lr
from pssl.report.table3 import gain_figure, markdown, table3
from pssl.settings import FinetuneSettings, TrainSettings
from pssl.train.finetune import finetune

DATASETS = ["camvid", "voc_aug", "pascal_context", "ade20k", "cityscapes"]


# ---- metrics -----------------------------------------------------------------------------------------------

def iou_by_counting(pred, target, num_classes, ignore=255):
    """Independent IoU: per class, count pixels with boolean masks."""
    valid = target != ignore
    ious = []
    for c in range(num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum()
        ious.append(np.nan if union == 0 else (p & t).sum() / union)
    acc = ((pred == target) & valid).sum() / valid.sum()
    return np.array(ious), acc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_an_independent_computation(seed):
    rng = np.random.default_rng(seed)
    num_classes = 6
    target = rng.integers(0, num_classes - 1, size=(4, 20, 30))  # class 5 never in the ground truth
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, num_classes, size=target.shape))
    pred[pred == 255] = 0
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), num_classes)
    result = scores(cm)
    ious, acc = iou_by_counting(pred, target, num_classes)
    got = np.array([np.nan if v is None else v for v in result["per_class_iou"]])
    assert np.allclose(got, ious, equal_nan=True)
    assert result["miou"] == pytest.approx(np.nanmean(ious))
    assert result["pixel_acc"] == pytest.approx(acc)
    assert cm.sum() == (target != 255).sum()


def test_class_absent_everywhere_is_left_out_of_the_mean():
    pred = torch.tensor([[0, 0, 1]])
    target = torch.tensor([[0, 1, 1]])
    result = scores(confusion_matrix(pred, target, 3))
    assert result["per_class_iou"][2] is None
    assert result["miou"] == pytest.approx((0.5 + 0.5) / 2)


# ---- loaders -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
def test_loaders_read_the_demo_layouts(tiny_demo, dataset):
    for split, n in (("train", 4), ("val", 2)):
        data = SegmentationSet(dataset, tiny_demo, split)
        assert len(data) == n
        rgb, labels = data.read(0)
        assert rgb.dtype == np.uint8 and rgb.shape[:2] == labels.shape
        values = set(np.unique(labels).tolist())
        assert values <= set(range(data.num_classes)) | {255} and values - {255}
        assert not data.unexpected, data.report_unexpected()


def test_class_counts():
    from pssl.data.downstream import DATASETS as SPECS
    assert {d: SPECS[d].num_classes for d in DATASETS} == {"camvid": 11, "voc_aug": 21, "pascal_context": 60,
                                                           "ade20k": 150, "cityscapes": 19}


def test_cityscapes_label_ids_become_train_ids(tiny_demo):
    data = SegmentationSet("cityscapes", tiny_demo, "train")
    raw = np.asarray(Image.open(data.pairs[0][1]))
    _, labels = data.read(0)
    assert np.all(labels[raw == 7] == 0) and np.all(labels[raw == 26] == 13) and np.all(labels[raw == 0] == 255)


def test_incomplete_tree_fails_naming_the_missing_path(tiny_demo, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(tiny_demo / "ADEChallengeData2016", copy / "ADEChallengeData2016")
    shutil.rmtree(copy / "ADEChallengeData2016" / "annotations" / "validation")
    with pytest.raises(FileNotFoundError, match="annotations/validation"):
        list_pairs("ade20k", copy, "val")
    with pytest.raises(FileNotFoundError, match="VOCdevkit"):
        list_pairs("voc_aug", tmp_path / "nowhere", "train")


def test_unexpected_label_values_are_reported_not_trained_on(tiny_demo, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(tiny_demo / "CamVid", copy / "CamVid")
    data = SegmentationSet("camvid", copy, "train")
    label_path = data.pairs[0][1]
    raw = np.asarray(Image.open(label_path)).copy()
    raw[:3, :3] = 42
    Image.fromarray(raw).save(label_path)
    _, labels = data.read(0)
    assert np.all(labels[:3, :3] == 255)
    assert "42" in data.report_unexpected()


# ---- inference and init ------------------------------------------------------------------------------------

def test_sliding_window_and_multiscale_flip_on_a_real_model():
    torch.manual_seed(0)
    model = build_segmenter("pspnet", "test_resnet", 4).eval()
    image = torch.rand(1, 3, 40, 72)
    with torch.no_grad():
        windows = sliding_window(model, image, 4, crop=32, stride=24)
    assert windows.shape == (1, 4, 40, 72) and torch.allclose(windows.sum(1), torch.ones(1, 40, 72))
    pred = predict(model, image, 4, scales=(0.75, 1.0, 1.25), flip=True, crop=32)
    assert pred.shape == (40, 72) and pred.dtype == torch.int64


class PixelModel(nn.Module):
    """Logits from a 1x1 convolution, plus (ramp) a left-to-right slope that makes the output depend on the
    pixel's column: a window sees exactly what the whole image sees at a pixel only without the ramp."""

    def __init__(self, classes: int = 4, ramp: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)
        torch.nn.init.normal_(self.conv.weight, std=3.0, generator=torch.Generator().manual_seed(0))
        self.ramp = ramp

    def forward(self, x):
        slope = torch.linspace(0, self.ramp, x.shape[-1]).view(1, 1, 1, -1)
        return {"out": self.conv(x) + slope * torch.arange(self.conv.out_channels).view(1, -1, 1, 1)}


@pytest.mark.parametrize("hw", [(50, 70), (20, 70), (70, 20), (33, 33)])
def test_sliding_windows_equal_the_whole_image_for_a_pixelwise_model(hw):
    """Windows overlap and pad (one side smaller than the window pads): a 1x1 model must give the whole
    image's probabilities exactly, at every pixel, whatever the window layout."""
    model = PixelModel().eval()
    image = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(image)["out"].softmax(1)
        windows = sliding_window(model, image, 4, crop=32, stride=20)
    assert windows.shape == whole.shape
    torch.testing.assert_close(windows, whole, rtol=1e-5, atol=1e-6)


def test_flip_and_scales_average_probabilities_mapped_back_to_the_image():
    model = PixelModel(ramp=4.0).eval()  # not flip-invariant: a flip not undone would change the result
    image = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(image)["out"].softmax(1)
        flipped = model(image.flip(-1))["out"].softmax(1).flip(-1)
        half = F.interpolate(model(F.interpolate(image, size=(12, 20), mode="bilinear", align_corners=False))[
            "out"].softmax(1), size=(24, 40), mode="bilinear", align_corners=False)
    assert torch.equal(predict(model, image, 4), plain.argmax(1)[0])
    assert torch.equal(predict(model, image, 4, flip=True), (plain + flipped).argmax(1)[0])
    assert not torch.equal((plain + flipped).argmax(1), (plain + plain.flip(-1)).argmax(1))
    assert torch.equal(predict(model, image, 4, scales=(0.5, 1.0)), (half + plain).argmax(1)[0])


# pretrained classes 5: the class layers stay fresh even where the checkpoint's would fit
@pytest.mark.parametrize(("pretrained_classes", "transfer"), [(11, "full"), (5, "full"), (11, "backbone")])
def test_pssl_init_loads_everything_but_the_class_layers(tmp_path, pretrained_classes, transfer):
    torch.manual_seed(0)
    pretrained = build_segmenter("pspnet", "test_resnet", pretrained_classes)
    path = tmp_path / "final.pt"
    torch.save({"model": pretrained.state_dict(), "config": {"head": "pspnet", "backbone": "test_resnet"}}, path)
    torch.manual_seed(1)
    model = build_segmenter("pspnet", "test_resnet", 5)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    init_from_pretrained(model, str(path), transfer)
    state, source = model.state_dict(), pretrained.state_dict()
    classifier = {"head.classifier.weight", "head.classifier.bias", "head.aux.2.weight", "head.aux.2.bias"}
    for k in state:
        if k in classifier or (transfer == "backbone" and k.startswith("head.")):
            assert torch.equal(state[k], fresh[k]) and (k not in classifier or state[k].shape[0] == 5), k
        else:
            assert k.startswith("backbone." if transfer == "backbone" else ""), k
            assert torch.equal(state[k], source[k]), k
    assert any(k.startswith("head.") and k not in classifier for k in state)
    with pytest.raises(ValueError, match="not a deeplabv3"):
        init_from_pretrained(build_segmenter("deeplabv3", "test_resnet", 5), str(path))


def test_finished_job_keeps_weights_and_metrics_not_resume_checkpoints(tiny_demo, tmp_path):
    params = TrainSettings(epochs=1, batch_size=2, lr=0.01, schedule="poly", checkpoint_every=1)
    out = tmp_path / "run"
    metrics = finetune("camvid", str(tiny_demo), out, head="pspnet", backbone="test_resnet", init="imagenet",
                       init_from=None, settings=FinetuneSettings(crop=32, base_size=48), train=params, device="cpu")
    assert json.loads((out / "metrics.json").read_text())["miou"] == metrics["miou"]
    assert not list(out.glob("ckpt-*.pt"))
    final = torch.load(out / "final.pt", weights_only=True)
    assert final["kind"] == "pssl-finetune" and final["config"]["num_classes"] == 11
    model = build_segmenter(final["config"]["head"], final["config"]["backbone"], final["config"]["num_classes"])
    model.load_state_dict(final["model"])  # the weights that were evaluated, loadable as they are


def test_freeze_backbone_trains_the_head_alone(tiny_demo, tmp_path):
    """freeze_backbone: the fine-tuned backbone is its init's, weights and BatchNorm statistics; the head moved."""
    params = TrainSettings(epochs=1, batch_size=2, lr=0.05, schedule="poly", freeze_backbone=True)
    torch.manual_seed(0)
    init = build_segmenter("pspnet", "test_resnet", 11)
    path = tmp_path / "init.pt"
    torch.save({"model": init.state_dict(), "config": {"head": "pspnet", "backbone": "test_resnet"}}, path)
    finetune("camvid", str(tiny_demo), tmp_path / "run", head="pspnet", backbone="test_resnet", init="pssl",
             init_from=str(path), settings=FinetuneSettings(crop=32, base_size=48), train=params, device="cpu")
    tuned = torch.load(tmp_path / "run/final.pt", weights_only=True)["model"]
    before = init.state_dict()
    assert all(torch.equal(tuned[k], before[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(tuned["head.bottleneck.0.weight"], before["head.bottleneck.0.weight"])


def test_the_per_class_layers_train_at_their_own_lr_multiplier():
    """classifier_lr_mult: one plain SGD step moves each parameter by -lr x its group's multiplier x its
    gradient (classifier 10, backbone 0.5, the rest of the head 1), and every trainable parameter is in
    exactly one group; at 1 the classifier stays in the head's group."""
    from pssl.train.loop import param_groups
    torch.manual_seed(0)
    model = build_segmenter("pspnet", "test_resnet", 5)
    p = TrainSettings(lr=0.01, backbone_lr_mult=0.5, classifier_lr_mult=10.0, momentum=0.0, weight_decay=0.0)
    groups = param_groups(model, p)
    classifier = {id(t) for layer in model.classifier_layers() for t in layer.parameters()}
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.005, 0.1])
    assert {id(t) for t in groups[2]["params"]} == classifier
    assert sorted(id(t) for g in groups for t in g["params"]) == sorted(id(t) for t in model.parameters())
    before = {name: t.detach().clone() for name, t in model.named_parameters()}
    optimizer = torch.optim.SGD(groups, lr=p.lr, momentum=0.0)
    model.train()
    out = model(torch.rand(2, 3, 32, 32))
    (out["out"].square().mean() + out["aux"].square().mean()).backward()
    optimizer.step()
    for name, t in model.named_parameters():
        mult = 10.0 if id(t) in classifier else 0.5 if name.startswith("backbone.") else 1.0
        assert torch.allclose(t.detach(), before[name] - 0.01 * mult * t.grad, atol=1e-7), name
    plain = param_groups(model, TrainSettings(lr=0.01))
    assert len(plain) == 2 and classifier <= {id(t) for t in plain[0]["params"]}


def test_a_zero_initialised_classifier_sends_no_gradient_into_the_head():
    """init_classifier: N(0, std^2) weights and zero biases on the per-class layers alone; at std 0 the first
    backward pass leaves the transferred segmentation module without gradient."""
    from pssl.models.weights import init_classifier
    torch.manual_seed(0)
    model = build_segmenter("pspnet", "test_resnet", 21)
    others = {k: v.clone() for k, v in model.state_dict().items()
              if not k.startswith(("head.classifier.", "head.aux.2."))}
    init_classifier(model, 0.01)
    weight = model.head.classifier.weight.detach()
    assert 0.009 < float(weight.std()) < 0.011 and abs(float(weight.mean())) < 0.002
    assert all(not layer.bias.any() for layer in model.classifier_layers())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in others.items())
    init_classifier(model, 0.0)
    model.train()
    out = model(torch.rand(2, 3, 32, 32))
    F.cross_entropy(out["out"], torch.randint(0, 21, (2, 32, 32))).backward()
    assert model.head.classifier.weight.grad.abs().sum() > 0
    assert not model.head.bottleneck[0].weight.grad.any()


def test_fine_tuning_applies_the_per_class_layers_settings(tiny_demo, tmp_path):
    """Through finetune() and its training loop: at a small lr, a 100x classifier multiplier moves the per-class
    layers about 100x as far and the rest of the head as far as at 1x; a std-0 start leaves them near zero."""
    torch.manual_seed(0)  # as finetune() seeds its model: the init's classifier is the fresh one it draws
    init = build_segmenter("pspnet", "test_resnet", 11)
    path = tmp_path / "init.pt"
    torch.save({"model": init.state_dict(), "config": {"head": "pspnet", "backbone": "test_resnet"}}, path)
    start = init.state_dict()

    def tuned(name: str, **changes) -> dict:
        train = TrainSettings(epochs=1, batch_size=2, lr=1e-5, schedule="poly", momentum=0.0, weight_decay=0.0,
                              **changes)
        finetune("camvid", str(tiny_demo), tmp_path / name, head="pspnet", backbone="test_resnet", init="pssl",
                 init_from=str(path), settings=FinetuneSettings(crop=32, base_size=48), train=train, device="cpu")
        return torch.load(tmp_path / name / "final.pt", weights_only=True)["model"]

    def moved(state: dict, key: str) -> float:
        return float((state[key] - start[key]).abs().sum())

    one, fast = tuned("x1"), tuned("x100", classifier_lr_mult=100.0)
    assert 50 < moved(fast, "head.classifier.weight") / moved(one, "head.classifier.weight") < 200
    assert 50 < moved(fast, "head.aux.2.weight") / moved(one, "head.aux.2.weight") < 200
    assert 0.5 < moved(fast, "head.bottleneck.0.weight") / moved(one, "head.bottleneck.0.weight") < 2
    assert float(one["head.classifier.weight"].abs().max()) > 1e-2
    assert float(tuned("std0", classifier_init_std=0.0)["head.classifier.weight"].abs().max()) < 1e-4


def test_head_names_are_the_registered_heads_everywhere():
    """The torch-free names are what the registry, the CLI and the config schema accept."""
    import yaml

    from pssl.cli import build_parser
    from pssl.models.catalog import HEAD_CLASSES, HEAD_NAMES, HEAD_TITLES
    from pssl.models.segmenter import Segmenter
    assert sorted(HEAD_CLASSES) == sorted(HEAD_NAMES) and all(HEAD_CLASSES[n].title == HEAD_TITLES[n] for n in HEAD_NAMES)
    Segmenter("ocrnet", "test_resnet", 2)  # the class alone works: importing it registered every head
    with pytest.raises(ValueError, match="unknown segmentation head 'unet'"):
        Segmenter("unet", "test_resnet", 2)
    pretrain_cli = build_parser()._subparsers._group_actions[0].choices["pretrain"]
    assert next(a for a in pretrain_cli._actions if a.dest == "head").choices == HEAD_NAMES
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    model = schema["properties"]["pretrain"]["properties"]["models"]["additionalProperties"]
    assert model["properties"]["head"]["enum"] == HEAD_NAMES


# ---- report ------------------------------------------------------------------------------------------------

def test_select_best_lr_chooses_on_val_not_on_the_reported_split(tmp_path):
    """Cells that report test (CamVid) pick their lr by the val mIoU in `selection`, never by test."""
    runs = []
    for lr, test_miou, val_miou in ((0.01, 0.60, 0.31), (0.02, 0.40, 0.45), (0.05, float("nan"), float("nan"))):
        p = tmp_path / f"lr{lr}.json"
        p.write_text(json.dumps({"miou": test_miou, "lr": lr, "pixel_acc": 0.5, "eval": {"split": "test"},
                                 "selection": {"split": "val", "miou": val_miou}}))
        runs.append(str(p))
    best = select_best_lr(runs, str(tmp_path / "best.json"))
    assert best["lr"] == 0.02 and set(best["lrs_tried"]) == {"0.01", "0.02", "0.05"}
    assert best["lrs_tried"]["0.01"] == 0.31
    assert json.loads((tmp_path / "best.json").read_text())["miou"] == 0.40


def test_table3_layout_and_differences():
    cells = pd.DataFrame([{"dataset": d, "model": m, "init": i, "split": split, "miou": v, "pixel_acc": 0.0,
                           "lr": 0.01, "lrs_tried": 1}
                          for d, split, base in (("camvid", "test", 60.0), ("ade20k", "val", 40.0))
                          for m in ("a", "b")
                          for i, v in (("imagenet", base), ("pssl", base + (1.5 if m == "a" else -0.5)))])
    table = table3(cells, {"a": "PSPNet-R", "b": "OCRNet-H"})
    assert list(table.index) == ["CamVid", "ADE20K"]
    assert list(table["split"]) == ["test", "val"]
    assert list(table.columns) == ["split", "PSPNet-R ImageNet", "PSPNet-R PSSL", "PSPNet-R diff",
                                   "OCRNet-H ImageNet", "OCRNet-H PSSL", "OCRNet-H diff"]
    assert table.loc["CamVid", "PSPNet-R diff"] == pytest.approx(1.5)
    assert table.loc["ADE20K", "OCRNet-H diff"] == pytest.approx(-0.5)
    md = markdown(table, cells)
    assert "| CamVid | test | 60.00 | 61.50 | +1.50 |" in md


def test_table3_reports_what_exists(tmp_path):
    """One init only: its columns and no difference; a missing cell: '–' in Markdown, a gap in the figure."""
    only_pssl = pd.DataFrame([{"dataset": d, "model": "a", "init": "pssl", "split": "val", "miou": 50.0,
                               "pixel_acc": 0.0, "lr": 0.01, "lrs_tried": 1} for d in ("camvid", "ade20k")])
    table = table3(only_pssl, {"a": "PSPNet-R"})
    assert list(table.columns) == ["split", "PSPNet-R PSSL"]
    gain_figure(table, tmp_path / "one_init.png")
    cells = pd.DataFrame([{"dataset": d, "model": "a", "init": i, "split": "val", "miou": 40.0, "pixel_acc": 0.0,
                           "lr": 0.01, "lrs_tried": 1}
                          for d, i in (("camvid", "imagenet"), ("camvid", "pssl"), ("ade20k", "imagenet"))])
    table = table3(cells, {"a": "PSPNet-R"})
    assert table.loc["CamVid", "PSPNet-R diff"] == 0 and np.isnan(table.loc["ADE20K", "PSPNet-R PSSL"])
    md = markdown(table, cells)
    assert "| ADE20K | val | 40.00 | – | – |" in md and "nan" not in md and "no result for that cell" in md
    gain_figure(table, tmp_path / "gap.png")
    assert (tmp_path / "gap.png").exists()
    svg = (tmp_path / "gap.svg").read_text()  # the chart states each bar's value, the model and the axis
    assert "+0.0" in svg and "PSPNet-R" in svg and "mIoU points" in svg and "CamVid" in svg


def test_padded_crop_pixels_are_ignored_in_fine_tuning_and_in_students(tiny_demo):
    """A crop larger than the scaled image (long side at most 2 x 16) is padded; the padding's labels are
    ignore (255), never a class: at least 64 x 64 - 32 x 32 of every crop's label pixels are ignore, and class 0
    holds at most the image's 32 x 32 (fine-tuning's set and a student's, the control's real repeats)."""
    from pssl.data.downstream import IGNORE
    from pssl.data.finetune_set import FinetuneDataset
    from pssl.data.student_set import StudentDataset

    data = SegmentationSet("camvid", tiny_demo, "train")
    for dataset in (FinetuneDataset(data, 64, 16, seed=0), StudentDataset(data, None, 1, 64, 16, seed=0)):
        for i in range(len(dataset)):
            rgb, labels = dataset[i]
            labels = np.asarray(labels)
            assert labels.shape == (64, 64)
            assert (labels == IGNORE).sum() >= 64 * 64 - 32 * 32, (type(dataset).__name__, i)
            assert (labels == 0).sum() <= 32 * 32, (type(dataset).__name__, i)
