"""One frozen settings dataclass per stage: the single source of each stage's options and their defaults.

The CLI builds its flags from these classes (`add_settings_flags`), the config schema's entries are generated
from them (`CONFIG_SECTIONS`, `section_schema`), the workflow turns a config section into the same flags
(`settings_flags(<stage>_settings(config, ...))`), and the library takes the objects as keyword arguments.
Defaults are the paper's values where the paper sets one, else the demo's; they fill every key a config
leaves out (pssl.config), so a config file holds only its differences.

Torch-free, so that `pssl --help` and Snakemake's DAG building start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from pssl.errors import InputError


def setting(default, help: str, choices: tuple | None = None, output: bool = True, *, ge=None, gt=None, le=None,
            lt=None, omit_default: bool = False):
    """A settings field: its default, help, choices and range (ge/gt/le/lt: >=, >, <=, <; of each item of a
    tuple), from which the config schema's entry is generated (`section_schema`). output=False marks a setting
    that cannot change what the stage writes (loader workers): it is left out of the identity hash of a
    resumable output. omit_default marks a setting added after outputs existed: at its default it is left out
    of the workflow's commands and of identities, so the jobs and checkpoints written before it stay valid."""
    bounds = {"minimum": ge, "exclusiveMinimum": gt, "maximum": le, "exclusiveMaximum": lt}
    return field(default=default, metadata={"help": help, "choices": choices, "output": output,
                                            "omit_default": omit_default,
                                            "bounds": {k: v for k, v in bounds.items() if v is not None}})


def stated(settings, f: dataclasses.Field) -> bool:
    """Whether a field is written into commands and identities (every field but an omit_default one at its
    default)."""
    return not (f.metadata["omit_default"] and getattr(settings, f.name) == f.default)


@dataclass(frozen=True)
class DemoSettings:
    seed: int = setting(0, "master seed of every synthetic image", ge=0)
    num_classes: int = setting(6, "classification classes (ImageNet-style wnids)", ge=2, le=40)
    images_per_class: int = setting(32, "classification images per class", ge=2, le=10000)
    val_images_per_class: int = setting(8, "held-out classification images per class (imagenet/val)", ge=0, le=10000)
    min_side: int = setting(80, "smallest side length of a classification image (pixels)", ge=32, le=2048)
    max_side: int = setting(200, "largest side length of a classification image (pixels)", ge=32, le=2048)
    downstream_train: int = setting(32, "train images of every downstream dataset", ge=1, le=10000)
    downstream_val: int = setting(16, "val (and CamVid test) images of every downstream dataset", ge=1, le=10000)
    pool_images: int = setting(32, "unlabelled pool images of every downstream dataset (their labels hidden)",
                               ge=0, le=10000)


@dataclass(frozen=True)
class IndexSettings:
    """Which images of the tree the index lists (config: imagenet_subset): the whole tree, or a slice of it
    for a pilot run. The slice is what indexing a tree of symlinks to the same files would give."""
    classes: int = setting(0, "index this many class folders, evenly spread over the sorted folders (every "
                              "n/classes-th: 100 of ImageNet's 1000 is every 10th; 0: all)", ge=0)
    images_per_class: int = setting(0, "index the first N images of each class folder in file-name order (0: all)",
                                    ge=0)


@dataclass(frozen=True)
class ZooSettings:
    """Training a classifier from scratch (zoo.source: train)."""
    image_size: int = setting(48, "input size S (images resized to S x S)", ge=16, le=1024)
    epochs: int = setting(5, "training epochs", ge=1, le=1000)
    batch_size: int = setting(16, "images per step", ge=2, le=4096)
    lr: float = setting(3e-3, "peak learning rate (AdamW, one-cycle)", gt=0, le=10)
    holdout: float = setting(0.2, "fraction of each class held out to measure accuracy", gt=0, lt=1)
    seed: int = setting(0, "seed of the hold-out split, initialisation and order", ge=0)


@dataclass(frozen=True)
class ExplainSettings:
    image_size: int = setting(224, "S: images are resized to S x S (no crop) and explained at that size",
                              ge=8, le=1024)
    n_samples: int = setting(50, "SmoothGrad noisy samples per image", ge=1, le=1000)
    noise_level: float = setting(0.1, "noise sigma as a fraction of the [0, 1] pixel range (InterpretDL's "
                                      "SmoothGrad: 0.1 x (max - min) of the input)", ge=0, le=1)
    output: str = setting("prob", "gradient of the target's softmax probability (prob) or logit", ("prob", "logit"))
    target: str = setting("class", "the image's label (class) or the zoo's top-1 (top1; unlabelled rows always)",
                          ("class", "top1"))
    batch_size: int = setting(16, "images per batch", ge=1, le=4096)
    sample_chunk: int | str = setting("auto", "noisy copies of each image per forward pass, or auto: per model, "
                                      "the fastest that fits the memory budget (measured)", output=False,
                                      ge=1, le=4096)
    memory_budget_gb: float = setting(0.0, "activation memory for sample_chunk auto (0: 0.8 x the GPU's free "
                                      "memory, 0.5 x the host's on CPU)", output=False, ge=0)
    keep_model_deciles: bool = setting(False, "also store each model's deciles (model_deciles)")
    precision: str = setting("auto", "auto: fp32, or the first of bf16 and TF32 (CUDA) the hardware runs natively "
                             "that moves the D9 mask at most half as far from fp32's as a second noise draw does "
                             "(measured on the first batch); fp32 is IEEE fp32 on CUDA too",
                             ("auto", "fp32", "bf16", "tf32"))
    num_workers: int = setting(0, "DataLoader workers decoding images (0: in the main process)", output=False,
                               ge=0, le=64)
    seed: int = setting(0, "seed of the SmoothGrad noise", ge=0)


@dataclass(frozen=True)
class LabelSettings:
    policy: str = setting("gt", "gt: the dataset's class; teacher: the zoo's top-1; agree: gt if in the "
                          "teacher's top_k", ("gt", "teacher", "agree"))
    top_k: int = setting(5, "agree: the teacher's top-k classes that must contain the label", ge=1)
    min_conf: float = setting(0.0, "drop images whose teacher top-1 probability is below this", ge=0, le=1)
    decile_threshold: int = setting(9, "pixels with decile >= this get the image's class", ge=1, le=9)
    num_workers: int = setting(0, "DataLoader workers decoding images", output=False, ge=0)


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation of pre-training and fine-tuning (one training loop for both). Defaults: the paper's
    pre-training (section 5.4: batch 64, 30 epochs, lr 0.01 -> 0.001 at epoch 20; PaddleSeg's relative_lr 0.1
    for the backbone); fine-tuning's own are FINETUNE_DEFAULTS."""
    epochs: int = setting(30, "training epochs", ge=1)
    batch_size: int = setting(64, "global batch, split evenly over the ranks", ge=2)
    lr: float = setting(0.01, "SGD learning rate of the head", gt=0)
    backbone_lr_mult: float = setting(0.1, "the backbone trains at lr x this (PaddleSeg's relative_lr)", gt=0)
    momentum: float = setting(0.9, "SGD momentum", ge=0, le=1)
    weight_decay: float = setting(1e-4, "SGD weight decay", ge=0)
    schedule: str = setting("step", "step (paper pre-training), poly (fine-tuning) or cosine (MDP's pre-training)",
                            ("step", "poly", "cosine"))
    milestone: int = setting(20, "step schedule: the epoch where lr is multiplied by gamma", ge=0)
    gamma: float = setting(0.1, "step schedule: lr factor at the milestone", gt=0)
    aux_weight: float = setting(0.4, "weight of the auxiliary head's loss", ge=0)
    checkpoint_every: int = setting(1000, "steps between checkpoints (also at every epoch end)", output=False, ge=1)
    num_workers: int = setting(0, "DataLoader workers per rank (0: in the main process)", output=False, ge=0)
    sync_bn: bool = setting(True, "SyncBatchNorm across GPUs (CUDA only)")
    freeze_bn: bool = setting(False, "BatchNorm on its running statistics (small per-GPU batches)")
    freeze_backbone: bool = setting(False, "fine-tuning: the backbone keeps its initial weights and BatchNorm "
                                    "statistics, only the head trains (MS3's Table 3: what the pre-trained "
                                    "features alone are worth)")
    classifier_lr_mult: float = setting(1.0, "fine-tuning: the fresh per-class layers (main and auxiliary "
                                        "classifier) train at lr x this (the paper: 1; DeepLab's fine-tuning: 10)",
                                        gt=0, omit_default=True)
    classifier_init_std: float | None = setting(None, "fine-tuning: the fresh per-class layers start from "
                                                "N(0, std^2) weights and zero biases (mmsegmentation: 0.01; null: "
                                                "PyTorch's default, Kaiming uniform)", ge=0, omit_default=True)
    precision: str = setting("auto", "auto: bf16 where native, fp16 + loss scaling on older GPUs, fp32 on CPU",
                             ("auto", "fp32", "bf16", "fp16"))
    seed: int = setting(0, "seed of initialisation, sampling order and augmentation", ge=0)


# TrainSettings that only fine-tuning sets (pre-trainings keep their defaults); the per-class layers' are not
# even flags of the pre-training commands, whose per-class layers train from the start
CLASSIFIER_FIELDS = ("classifier_lr_mult", "classifier_init_std")
FINETUNE_ONLY = ("freeze_backbone", *CLASSIFIER_FIELDS)

# Fine-tuning's optimisation where it differs from pre-training's (the paper's section 5.4: batch 16, poly lr;
# the whole model at one lr).
FINETUNE_DEFAULTS = {"batch_size": 16, "schedule": "poly", "backbone_lr_mult": 1.0, "checkpoint_every": 500}


@dataclass(frozen=True)
class PretrainSettings:
    """What pre-training learns from (eq. 3 and the label maps); the optimisation is TrainSettings."""
    crop: int = setting(256, "training crop (random scale: shorter side 0.5-2.0 x crop)", ge=16, le=4096)
    w_bg: float = setting(0.1, "background weight of the weighted cross entropy (eq. 3)", ge=0)
    pad_label: str = setting("background", "label of padded pixels (crop, rotation; the authors' code at the "
                             "paper's commit: background, later PaddleSeg: ignore)", ("ignore", "background"))
    decile_threshold: int = setting(9, "pixels with decile >= this get the image's class, others background",
                                    ge=1, le=9)
    ignore_deciles: tuple[int, ...] = setting((), "deciles whose pixels the loss ignores", ge=0, le=9)
    images: int = setting(0, "train on the first N usable images of one fixed random order, so smaller sets "
                             "are inside larger ones (0: all)", ge=0)
    label_mode: str = setting("hard", "hard: the D>=threshold label map (eq. 3); fused: PseudoSeg's calibrated "
                              "fusion of the model's own weak-view prediction with the explanation prior, soft "
                              "labels on the strong view", ("hard", "fused"))
    fusion_gamma: float = setting(0.5, "fused: weight of the model's prediction (1 - gamma: the prior)", ge=0, le=1)
    fusion_temperature: float = setting(0.5, "fused: sharpening temperature T", gt=0)
    fusion_prior: str = setting("deciles", "fused: prior s on the image's class from the ensemble deciles: D/9 "
                                "(deciles), 1 on D9 and 0 elsewhere (d9, the region the paper's labels take), or "
                                "the fraction of models whose own decile is 9 (models; needs keep_model_deciles)",
                                ("deciles", "d9", "models"))
    fusion_calibration: str = setting("decoder", "fused: decoder, the decoder's logits divided by their RMS over "
                                      "all channels, the prior mixed in as a probability; shared, eq. 4 (one RMS "
                                      "over the decoder's logits and the prior, both softmaxed) on the two "
                                      "channels the prior speaks for (the image's class, background); measured on "
                                      "the demo, shared collapsed pre-training to background",
                                      ("decoder", "shared"))
    cutout: float = setting(0.1, "fused: side of the strong view's CutOut square as a fraction of the crop (the "
                            "paper: 50 of 513 pixels, 0.1; the authors' code 100, 0.2; 0: none)", ge=0, lt=1)
    label_source: str = setting("deciles", "the label maps' foreground: the image's own explanation (deciles, the "
                                "method) or a control: its true object mask (oracle, from imagenet_masks_root), "
                                "another image's region (shuffled), a centred ellipse of its region's area (centre)",
                                ("deciles", "oracle", "shuffled", "centre"))
    continue_from: str | None = setting(None, "a pre-training variant of the same model (main: the pretrain "
                                        "section's) whose final state (weights, optimizer, schedule position, "
                                        "random streams) this one trains on to `epochs`, instead of starting anew "
                                        "(Table 4's 60 epochs: the 30-epoch model trained 30 more)")


@dataclass(frozen=True)
class FinetuneSettings:
    """One dataset's fine-tuning and evaluation geometry; the optimisation is TrainSettings. Defaults: the
    paper's section 5.4 (crop 480, base size 520; multi-scale 0.5-1.75 and flipped evaluation)."""
    crop: int = setting(480, "training crop", ge=16)
    base_size: int = setting(520, "training: long side random in [0.5, 2] x base; evaluation: scale x base", ge=16)
    window: int | None = setting(None, "sliding-window size for evaluation (none: the whole image)", ge=16)
    eval_split: str = setting("val", "the split the metrics report (a lr grid is always chosen on val)",
                              ("val", "test"))
    scales: tuple[float, ...] = setting((0.5, 0.75, 1.0, 1.25, 1.5, 1.75), "evaluation scales, relative to "
                                        "base_size", gt=0)
    flip: bool = setting(True, "evaluation also on the horizontally flipped image")


@dataclass(frozen=True)
class LrSearchSettings:
    """How each fine-tune cell's initial learning rate is chosen on val (pssl.lr_search; the paper's section
    5.4 searched the {5, 2, 1} x 10^-n ladder for a clear peak)."""
    mode: str = setting("peak", "peak: the paper's search on the lr_grid ladder from the cell's lr; grid: every "
                                "lr_grid value; fixed: the cell's lr alone", ("peak", "grid", "fixed"))
    margin: float = setting(0.5, "peak: a neighbour of the best lr is clearly worse when its val mIoU is more "
                                 "than this many points below the best's (about one seed's spread at full scale); "
                                 "else the search goes on that way", ge=0)
    max_values: int = setting(5, "peak: the most learning rates one cell's search trains (at least 3: round 0)",
                              ge=3)
    seeds: str = setting("first", "peak: first: search on the first seed, train the other seeds at its choice; "
                                  "each: search every seed", ("first", "each"))


@dataclass(frozen=True)
class SanitySettings:
    """The floors of the sanity page (pssl.report.sanity), e.g. of a pilot run before the paper run."""
    min_zoo_top1: float = setting(0.7, "the zoo ensemble's top-1 must agree with the label on more than this "
                                       "fraction of the labelled images it explains", ge=0, le=1)
    min_stability_iou: float = setting(0.3, "mean D9 IoU of two SmoothGrad noise draws on a store's first "
                                            "images must exceed this (real classifiers, 50 samples: about 0.43)",
                                       ge=0, le=1)
    min_miou_over_chance: float = setting(5.0, "every fine-tuned cell's mIoU must exceed chance by this many "
                                               "points (chance: 100 / (2K - 1) for K classes, a uniform guess)",
                                          ge=0, le=100)


@dataclass(frozen=True)
class ClassifySettings:
    """Table 4's ImageNet top-1 (pssl eval-classify): one input protocol for every row, the pre-trained
    segmentation models and the ImageNet classifier alike, single scale (the paper's section 6.1)."""
    resize: int = setting(256, "the shorter side of every val image is resized to this (bilinear)", ge=1)
    crop: int = setting(224, "the central crop x crop of it is classified", ge=1)


# What a teacher takes from its dataset's FinetuneSettings: the evaluation geometry, not the training crop.
EVAL_GEOMETRY = ("base_size", "window", "scales", "flip")


@dataclass(frozen=True)
class TeacherSettings:
    """Teacher inference on an unlabelled pool (self-training); the geometry is the dataset's evaluation's."""
    confidence: float = setting(0.0, "pixels whose teacher probability is below this become ignore (0: hard "
                                "argmax labels everywhere, the paper's choice)", ge=0, le=1)
    tile: int = setting(1024, "class centroids are taken per tile x tile tile (NVIDIA's uniform sampler)", ge=16)


@dataclass(frozen=True)
class StudentSettings:
    """What a self-training student adds to its dataset's fine-tuning (defaults: Zhu et al.'s Cityscapes
    setting, OHEM as OCNet's and CCNet's OhemCrossEntropy2d)."""
    data: str = setting("pseudo", "pseudo: real set + centroid-sampled pseudo-labelled pool; duplicate: the "
                        "paper's control, the real set repeated to the same epoch size", ("pseudo", "duplicate"))
    multiplier: int = setting(7, "k: every epoch is a random half of the real set + k x as many pseudo samples "
                              "(the control: the real set repeated to the same size)", ge=1)
    loss: str = setting("ohem", "the student's loss: cross entropy, or OHEM's (Zhu et al.) on the hard pixels",
                        ("ce", "ohem"))
    ohem_threshold: float = setting(0.7, "ohem: keep the pixels whose predicted probability of their label is at "
                                         "most this", gt=0, le=1)
    ohem_min_kept: int = setting(100000, "ohem: keep at least this many pixels of every image (the hardest)", ge=0)


@dataclass(frozen=True)
class MultiDatasetSettings:
    """What MDP and MS3 share (pssl.train.multi_dataset): labelled downstream sets, their union label space,
    two 3-layer projection heads on the segmenter's features, a momentum key encoder, a memory of the last
    batches. The optimisation is TrainSettings with MULTI_DATASET_TRAIN_DEFAULTS."""
    datasets: tuple[str, ...] = setting(("voc_aug", "ade20k"), "the labelled sets pre-trained on (their train "
                                        "splits; classes: the union of theirs)")
    merge_names: bool = setting(False, "one class for a name several datasets share (default: every class "
                                "qualified by its dataset, the papers' union Y1 u Y2)")
    crop: int = setting(224, "training crop: each image's random scale (shorter side 0.5-2.0 x crop) and crop",
                        ge=16, le=4096)
    embed_dim: int = setting(256, "width of the L2-normalised pixel embeddings of the projection heads", ge=2)
    memory_images: int = setting(10240, "N_b: images the memory spans (the last N_b / batch_size batches' class "
                                 "sums; MDP's best 10,240)", ge=1)
    temperature: float = setting(0.07, "tau of the pixel-to-class InfoNCE", gt=0)
    key_momentum: float = setting(0.999, "EMA momentum of the key encoder (the papers give none: MoCo v2's)",
                                  ge=0, lt=1)
    backbone_start: str = setting("scratch", "scratch: every weight random (the papers' rows); imagenet: the "
                                 "backbone from the model's zoo classifier, as PSSL's", ("scratch", "imagenet"))


@dataclass(frozen=True)
class MdpSettings(MultiDatasetSettings):
    """MDP's pixel-to-prototype pre-training (pssl.train.mdp; README, "MDP"): eq. 2's prototypes, the class
    and consistency terms, cross-dataset mixing. Defaults: the paper's section 4.1."""
    consistency_weight: float = setting(0.2, "alpha of L_class + alpha L_con (eq. 9; 0: no consistency term)",
                                        ge=0)
    temperature_query: float = setting(0.07, "tau_q of the consistency term's query softmax (eq. 8)", gt=0)
    temperature_key: float = setting(0.04, "tau_k of the consistency term's key softmax (sharper, as DINO)", gt=0)
    cutmix: bool = setting(True, "cross-dataset CutMix (eq. 4): a box of another dataset's image and labels")
    mixup: bool = setting(True, "cross-dataset Mixup (eq. 5-6): lambda x_i + (1 - lambda) x_j, both labels' "
                          "losses weighted by lambda")
    mix_prob: float = setting(0.5, "the fraction of images mixed with another dataset's (with cutmix and mixup "
                              "both on, each mixed image draws one of them; the paper gives no rate: CutMix's "
                              "0.5)", ge=0, le=1)


@dataclass(frozen=True)
class Ms3Settings(MultiDatasetSettings):
    """MS3's language- and vision-supervised pre-training (pssl.train.ms3; README, "MS3"): pixel-to-text and
    pixel-to-visual-embedding InfoNCE with the cross-modal multi-label mapping. Defaults: the paper's 4.1."""
    embed_dim: int = setting(512, "width of the visual head's L2-normalised embeddings (the language head's is "
                             "the class vectors' width)", ge=2)
    visual_weight: float = setting(1.0, "alpha of L_l + alpha L_v (eq. 3 / 9)", ge=0)
    multi_label: bool = setting(True, "the cross-modal multi-label mapping (eq. 5-8): a class also pulls toward "
                                "the other datasets' classes its pixels are as close to in the text space")
    mapping_warmup: float = setting(0.1, "the fraction of training before the mapping starts (the paper gives "
                                    "none: before the pixel embeddings align with the class vectors, about half of "
                                    "every other dataset's classes pass eq. 6)", ge=0, le=1)
    text_source: str = setting("minilm", "where the class vectors T come from (pssl embed-classes): minilm "
                               "(offline, all-MiniLM-L6-v2), clip (MS3's CLIP ViT-B/32; needs open_clip and its "
                               "weights) or table (text_table)", ("minilm", "clip", "table"))
    text_table: str | None = setting(None, "text_source table: a CSV or Parquet of names and vectors computed "
                                     "elsewhere")


# MDP's and MS3's optimisation (their sections 4.1): SGD 0.9, weight decay 4e-5, batch 128, lr 0.8 decayed to 0
# by a cosine, 100 epochs (MDP's Table 1: 100 and 200); one lr for the whole model, no auxiliary head.
MULTI_DATASET_TRAIN_DEFAULTS = {"batch_size": 128, "lr": 0.8, "schedule": "cosine", "weight_decay": 4e-5, "epochs": 100,
                      "backbone_lr_mult": 1.0}


# ---- config sections -> schema ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fields:
    """Fields of `cls` that a config section holds: all but `exclude` (set elsewhere in the config), or only
    `only`; `defaults` where the section's default differs from the field's; `no_default` fields a config must
    name or may leave out (see `Section`)."""
    cls: type
    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    defaults: dict = field(default_factory=dict)
    no_default: tuple[str, ...] = ()

    def fields(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self.cls)
                if f.name not in self.exclude and (self.only is None or f.name in self.only)]


@dataclass(frozen=True)
class Section:
    """A config section's settings (a dotted path; `*` is every entry of a mapping). overrides: the section
    only overrides another's settings (pretrain_variants, per_model), so nothing has a default there."""
    parts: tuple[Fields, ...]
    overrides: bool = False


PRETRAIN_FIELDS = (Fields(PretrainSettings, exclude=("decile_threshold", "ignore_deciles")),
                   Fields(TrainSettings, exclude=("seed", *FINETUNE_ONLY)))
DATASET_FIELDS = (Fields(FinetuneSettings, exclude=("scales", "flip")),
                  Fields(TrainSettings, only=("epochs", "weight_decay", "lr"), no_default=("epochs", "lr")))
# a model's overrides of its dataset's settings: not the split the table reports, which is the dataset's
PER_MODEL_FIELDS = (Fields(FinetuneSettings, exclude=("scales", "flip", "eval_split")), DATASET_FIELDS[1])

MULTI_DATASET_TRAIN_FIELDS = Fields(TrainSettings, exclude=("seed", "milestone", "gamma", "aux_weight", *FINETUNE_ONLY),
                                    defaults=MULTI_DATASET_TRAIN_DEFAULTS)

# Where each stage setting lives in a config. The schema's entries for them are generated from the dataclasses
# (pssl.config.config_schema), so a setting, its default, type, range, choices and help are written once.
CONFIG_SECTIONS: dict[str, Section] = {
    "demo": Section((Fields(DemoSettings, exclude=("seed",)),)),
    "imagenet_subset": Section((Fields(IndexSettings),)),
    "zoo.train": Section((Fields(ZooSettings, exclude=("seed",)),)),
    "explain": Section((Fields(ExplainSettings, exclude=("seed",)),)),
    "labels": Section((Fields(LabelSettings, exclude=("num_workers",)),
                       Fields(PretrainSettings, only=("ignore_deciles",)))),
    "pretrain": Section(PRETRAIN_FIELDS),
    "pretrain_variants.*": Section((*PRETRAIN_FIELDS, Fields(PretrainSettings, only=("decile_threshold",
                                                                                     "ignore_deciles"))),
                                   overrides=True),
    "finetune": Section((Fields(TrainSettings, exclude=("epochs", "weight_decay", "milestone", "gamma", "seed"),
                                defaults=FINETUNE_DEFAULTS),)),
    "mdp": Section((Fields(MdpSettings), MULTI_DATASET_TRAIN_FIELDS)),
    "ms3": Section((Fields(Ms3Settings), MULTI_DATASET_TRAIN_FIELDS)),
    "finetune.lr_search": Section((Fields(LrSearchSettings),)),
    "finetune.datasets.*": Section(DATASET_FIELDS),
    "finetune.datasets.*.per_model.*": Section(PER_MODEL_FIELDS, overrides=True),
    "eval": Section((Fields(FinetuneSettings, only=("scales", "flip")),)),
    "classify": Section((Fields(ClassifySettings),)),
    "sanity": Section((Fields(SanitySettings),)),
    "self_training": Section((Fields(TeacherSettings), Fields(StudentSettings, exclude=("data",)))),
}


def _json(value):
    return list(value) if isinstance(value, tuple) else value


def field_schema(f: dataclasses.Field, hint) -> dict:
    """The JSON schema of one settings field: its type (from the annotation), choices, range and help."""
    meta, bounds = f.metadata, dict(f.metadata["bounds"])
    if meta["choices"]:
        schema = {"enum": list(meta["choices"])}
    elif hint is bool:
        schema = {"type": "boolean"}
    elif typing.get_origin(hint) is tuple:
        item = {int: "integer", float: "number", str: "string"}[typing.get_args(hint)[0]]
        schema = {"type": "array", "items": {"type": item, **bounds}}
        if item != "integer":  # scales, datasets: at least one
            schema["minItems"] = 1
        if item != "number":
            schema["uniqueItems"] = True
    elif hint == (int | str):  # a number or auto
        schema = {"oneOf": [{"type": "integer", **bounds}, {"const": "auto"}]}
    else:
        nullable = type(None) in typing.get_args(hint)
        base = next(t for t in (typing.get_args(hint) or (hint,)) if t is not type(None))
        kind = {int: "integer", float: "number", str: "string"}[base]
        schema = {"type": [kind, "null"] if nullable else kind, **bounds}
    return {**schema, "description": meta["help"]}


def section_schema(section: Section) -> dict[str, dict]:
    """Property name -> JSON schema (with `default` unless the section only overrides) of a config section's
    settings."""
    properties = {}
    for part in section.parts:
        hints = typing.get_type_hints(part.cls)
        for f in part.fields():
            schema = field_schema(f, hints[f.name])
            if not section.overrides and f.name not in part.no_default:
                schema["default"] = _json(part.defaults.get(f.name, f.default))
            properties[f.name] = schema
    return properties


# ---- config -> settings (the workflow) --------------------------------------------------------------------

def pick(cls, values: dict, optional: tuple[str, ...] = (), **overrides):
    """An instance of `cls` from the keys of `values` that are its fields (others belong to other stages).
    Every field but the `optional` ones must be given: the validated config has every default filled, so a
    missing key is a config that skipped validation."""
    names = [f.name for f in dataclasses.fields(cls)]
    chosen = {**{k: v for k, v in values.items() if k in names}, **overrides}
    missing = [n for n in names if n not in chosen and n not in optional]
    if missing:
        raise InputError(f"{cls.__name__}: the config gives no {', '.join(missing)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items()})


def demo_settings(config: dict) -> DemoSettings:
    return pick(DemoSettings, config["demo"], seed=config["seed"])


def index_settings(config: dict) -> IndexSettings:
    return pick(IndexSettings, config["imagenet_subset"])


def sanity_settings(config: dict) -> SanitySettings:
    return pick(SanitySettings, config["sanity"])


def zoo_settings(config: dict) -> ZooSettings:
    return pick(ZooSettings, config["zoo"]["train"], seed=config["seed"])


def classify_settings(config: dict) -> ClassifySettings:
    return pick(ClassifySettings, config["classify"])


def explain_settings(config: dict) -> ExplainSettings:
    return pick(ExplainSettings, config["explain"], seed=config["seed"])


def label_settings(config: dict) -> LabelSettings:
    return pick(LabelSettings, config["labels"], num_workers=config["explain"]["num_workers"])


MAIN = "main"  # the pre-training of the pretrain section itself (Table 3); other names: pretrain_variants

# Pre-training variants every config has (a config's own entry of the same name replaces one): the label-source
# controls (README, "Controls") and PseudoSeg's fused labels. Each runs only where an init or experiment names it.
BUILTIN_VARIANTS = {"oracle": {"label_source": "oracle"}, "shuffled": {"label_source": "shuffled"},
                    "centre": {"label_source": "centre"}, "fused": {"label_mode": "fused"}}


FUSION_FIELDS = ("fusion_gamma", "fusion_temperature", "fusion_prior", "fusion_calibration", "cutout")


def pretrain_settings(config: dict, variant: str = MAIN) -> tuple[PretrainSettings, TrainSettings]:
    """The pretrain section's settings, with a named variant's overrides (`pretrain_variants`) on top. With
    hard labels the fusion settings do not apply and stay at their defaults, so tuning them reruns only the
    fused pre-trainings."""
    labels = config["labels"]
    values = {"decile_threshold": labels["decile_threshold"], "ignore_deciles": labels["ignore_deciles"],
              **config["pretrain"], **pretrain_variant(config, variant)}
    settings = pick(PretrainSettings, values)
    if settings.label_mode == "hard":
        defaults = {f.name: f.default for f in dataclasses.fields(PretrainSettings) if f.name in FUSION_FIELDS}
        settings = dataclasses.replace(settings, **defaults)
    return settings, pick(TrainSettings, values, optional=FINETUNE_ONLY, seed=config["seed"])


def multi_dataset_settings(config: dict, method: str) -> tuple[MdpSettings | Ms3Settings, TrainSettings]:
    """The mdp or ms3 section: the method's objective and data, and its optimisation."""
    cls = {MDP: MdpSettings, MS3: Ms3Settings}[method]
    return pick(cls, config[method]), pick(TrainSettings, config[method], optional=(
        "milestone", "gamma", "aux_weight", *FINETUNE_ONLY), seed=config["seed"])


MDP, MS3 = "mdp", "ms3"  # the fine-tune inits (and experiments' rows) of the multi-dataset pre-trainings
MULTI_DATASET = (MDP, MS3)  # each configured by the config section of its name


def pssl_init(variant: str) -> str:
    """The fine-tune init name of a pre-training variant: pssl (main) or pssl-<variant>; an experiment's row
    mdp or ms3 is that method's pre-training, init mdp or ms3."""
    return "pssl" if variant == MAIN else variant if variant in MULTI_DATASET else f"pssl-{variant}"


BACKBONE_ONLY = "~backbone"  # init suffix: a PSSL init's backbone alone, with a fresh head (a control)


def init_transfer(init: str) -> tuple[str, str]:
    """(the init without its transfer suffix, what it transfers): pssl~backbone -> (pssl, backbone)."""
    return (init.removesuffix(BACKBONE_ONLY), "backbone") if init.endswith(BACKBONE_ONLY) else (init, "full")


STUDENT_DATA = {"st": "pseudo", "dup": "duplicate"}  # init suffix -> StudentSettings.data


def student_init(init: str, suffix: str) -> str:
    """The fine-tune init name of a self-training student: imagenet+st, pssl+st, or the control imagenet+dup."""
    return f"{init}+{suffix}"


LIKE = "like"  # a variant's key naming the variant whose overrides it starts from


def pretrain_variant(config: dict, variant: str, seen: tuple[str, ...] = ()) -> dict:
    """A variant's overrides of the pretrain section: its own, then those of the variant it is `like`
    (recursively; main: none), e.g. Table 1's w_B rows each like the row of the same images and schedule."""
    if variant == MAIN:
        return {}
    variants = config.get("pretrain_variants") or {}
    if variant not in variants:
        raise InputError(f"no pre-training variant {variant!r}; pretrain_variants: {', '.join(variants) or 'none'}")
    if variant in seen:
        raise InputError(f"pretrain_variants.{seen[0]}.like: {' -> '.join([*seen, variant])} is a circle")
    own = dict(variants[variant] or {})
    base = pretrain_variant(config, own.pop(LIKE), (*seen, variant)) if LIKE in own else {}
    return {**own, **{k: v for k, v in base.items() if k not in own}}


def lr_search_settings(config: dict) -> LrSearchSettings:
    return pick(LrSearchSettings, config["finetune"]["lr_search"])


def teacher_settings(config: dict) -> TeacherSettings:
    return pick(TeacherSettings, config["self_training"])


def student_settings(config: dict, data: str) -> StudentSettings:
    return pick(StudentSettings, config["self_training"], data=data)


def finetune_settings(config: dict, dataset: str, model: str, lr: float | None = None, seed: int | None = None
                      ) -> tuple[FinetuneSettings, TrainSettings]:
    """One fine-tune job's settings: the dataset's (with its per_model overrides for `model`), the evaluation's,
    and the finetune section's optimisation with the dataset's epochs, weight decay and lr where it sets one
    (the cell's lr: fixed, or where a peak search starts); `lr` and `seed` are the job's (a cell is trained
    once per `finetune.seeds` entry, at each lr its search tries)."""
    dataset_settings = dict(config["finetune"]["datasets"][dataset])
    dataset_settings.update(dataset_settings.pop("per_model", {}).get(model, {}))
    evaluation = config["eval"]
    geometry = pick(FinetuneSettings, dataset_settings, scales=tuple(evaluation["scales"]), flip=evaluation["flip"])
    # the step schedule's milestone and gamma are optional: fine-tuning uses poly
    train = pick(TrainSettings, {**config["finetune"], "epochs": dataset_settings["epochs"],
                                 "weight_decay": dataset_settings["weight_decay"],
                                 "lr": dataset_settings.get("lr", config["finetune"]["lr"])},
                 optional=("milestone", "gamma"), seed=config["seed"] if seed is None else seed)
    return geometry, train if lr is None else dataclasses.replace(train, lr=lr)


# ---- settings <-> command line ------------------------------------------------------------------------------

def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def settings_flags(*settings, fields: tuple[str, ...] | None = None) -> str:
    """Settings objects as `pssl` flags: every field (or those named in `fields`), e.g. "--n-samples 8
    --keep-model-deciles true"."""
    def text(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return " ".join(map(str, value))
        return "none" if value is None else str(value)
    return " ".join(f"{flag(f.name)} {text(getattr(s, f.name))}".rstrip()
                    for s in settings for f in dataclasses.fields(s)
                    if (fields is None or f.name in fields) and stated(s, f))


def parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("1", "true", "yes", "0", "false", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return lowered in ("1", "true", "yes")


def optional_int(value: str) -> int | None:
    return None if value.lower() in ("none", "null") else int(value)


def optional_float(value: str) -> float | None:
    return None if value.lower() in ("none", "null") else float(value)


def optional_str(value: str) -> str | None:
    return None if value.lower() in ("none", "null") else value


def int_or_auto(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive integer, got {value!r}")
    return int(value)


def add_settings_flags(parser: argparse.ArgumentParser, cls, fields: tuple[str, ...] | None = None,
                       defaults: dict | None = None, exclude: tuple[str, ...] = ()) -> None:
    """One --flag per field of `cls` (or per field named in `fields`, none of `exclude`; snake_case ->
    kebab-case), typed by its annotation, with its help; `defaults`: the command's own where they differ from
    the field's (fine-tuning's optimisation, FINETUNE_DEFAULTS)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (pssl.settings)")
    for f in dataclasses.fields(cls):
        if (fields is not None and f.name not in fields) or f.name in exclude:
            continue
        if f.metadata["omit_default"] and f.name in (defaults or {}):
            # the workflow leaves the flag out at the field's default, which the command must then also take
            raise ValueError(f"{f.name} is omitted from commands at its default, so no command may change it")
        kind, meta = hints[f.name], f.metadata
        options = {"default": (defaults or {}).get(f.name, f.default), "help": meta["help"] + " (default: %(default)s)"}
        if meta["choices"]:
            options["choices"] = meta["choices"]
        if kind is bool:
            options.update(type=parse_bool, metavar="BOOL")
        elif typing.get_origin(kind) is tuple:
            options.update(type=typing.get_args(kind)[0], nargs="*")
        elif kind == (int | None):
            options.update(type=optional_int, metavar="INT|none")
        elif kind == (float | None):
            options.update(type=optional_float, metavar="FLOAT|none")
        elif kind == (str | None):
            options.update(type=optional_str, metavar="NAME|none")
        elif kind == (int | str):
            options.update(type=int_or_auto, metavar="INT|auto")
        else:
            options["type"] = kind
        group.add_argument(flag(f.name), **options)


def settings_from_args(cls, args: argparse.Namespace):
    """`cls` from the parsed flags; fields without a flag (add_settings_flags' `fields`) keep their defaults."""
    return cls(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
                  for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def output_identity(settings) -> dict:
    """The fields that decide what a stage writes (for an output's identity hash)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if f.metadata["output"] and stated(settings, f)}
