"""Training run used by test_pretrain.py: launched as one process, or under torchrun with several ranks.

    python tests/ddp_worker.py OUT.pt CKPT_DIR [--epochs N] [--fused | --mdp DEMO_ROOT | --ms3 DEMO_ROOT VECTORS]

A real PSPNet on a small synthetic segmentation set (with --mdp: MDP's objective on the demo tree's VOC-Aug
and ADE20K train sets, its key encoder and prototype memory in the saved state); dropout off and BatchNorm
frozen so that N ranks with a global batch B compute exactly what one process with batch B computes
(SyncBatchNorm has no CPU path).
"""

import argparse

import torch
import torch.nn as nn

from pssl.cli import configure_logging
from pssl.distributed import init_distributed, shutdown
from pssl.models.segmenter import build_segmenter
from pssl.settings import TrainSettings
from pssl.train.loop import Fusion, fit
from pssl.train.losses import class_weights


class SyntheticSegmentation(torch.utils.data.Dataset):
    """Deterministic images with a bright square labelled 1 on background 2 (3 outputs)."""

    def __init__(self, n: int = 16, size: int = 32):
        self.n, self.size = n, size

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, self.size, self.size, generator=g) * 0.5
        mask = torch.full((self.size, self.size), 2, dtype=torch.long)
        y, x = torch.randint(0, self.size - 12, (2,), generator=g).tolist()
        image[:, y:y + 12, x:x + 12] += 0.5
        mask[y:y + 12, x:x + 12] = 1
        mask[:2] = -1  # an ignored band
        return image, mask


class SyntheticFusedViews(SyntheticSegmentation):
    """The same scenes as PseudoSeg's fused views (pssl.data.pseudo): a prior 0.8 on the square's class 1
    (0.2 elsewhere), the strong view darkened, the ignored band excluded. Contrast varies 8x between images,
    so each rank's share of a batch has its own logit scale: the fusion's RMS must span the global batch."""

    def __getitem__(self, i):
        image, mask = super().__getitem__(i)
        image = (image - 0.5) * (4.0 if i % 3 == 0 else 0.5) + 0.5
        return {"weak": image, "strong": image * 0.8, "strength": torch.where(mask == 1, 0.8, 0.2),
                "label": torch.tensor(1), "valid": (mask != -1).float()}


def fit_multi(segmenter, root: str, params: TrainSettings, out: str, info, vectors: str | None = None):
    """MDP (or with `vectors` MS3, its mapping from the second step) on the demo's VOC-Aug and ADE20K (8
    images); MDP with Mixup and CutMix both on; a memory of 2 batches (so batches leave it during the run)."""
    from pssl.data.downstream import SegmentationSet
    from pssl.data.multi_dataset import union_labels
    from pssl.settings import MdpSettings, Ms3Settings
    from pssl.train.mdp import Mdp
    from pssl.train.ms3 import Ms3
    from pssl.train.multi_dataset import MultiDatasetModel, freeze_unreached

    if vectors:
        settings = Ms3Settings(crop=32, embed_dim=8, memory_images=8, key_momentum=0.5, mapping_warmup=0.1)
        method = Ms3(settings, params, union_labels(settings.datasets), class_embeddings=vectors)
    else:
        settings = MdpSettings(crop=32, embed_dim=8, memory_images=8, key_momentum=0.5, mix_prob=0.75)
        method = Mdp(settings, params, union_labels(settings.datasets))  # a memory of 8 / 4: 2 batches
    data = method.views([SegmentationSet(d, root, "train") for d in settings.datasets], params.seed)
    model = MultiDatasetModel(segmenter, method.heads(), method.memory())
    freeze_unreached(model, 64)
    return fit(model, data, torch.ones(1), params, out, info, ignore_index=-1, objective=method.objective(info))


def pspnet_without_dropout() -> nn.Module:
    """The runs' PSPNet-ResNet10t (3 outputs), seeded, dropout off so that ranks and runs compare exactly."""
    torch.manual_seed(0)
    model = build_segmenter("pspnet", "resnet10t", 3)
    for m in model.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    return model


def fit_squares(params: TrainSettings, out: str, info, fused: bool = False) -> nn.Module:
    """That PSPNet trained by the real loop on the synthetic squares (or their fused views)."""
    data = SyntheticFusedViews() if fused else SyntheticSegmentation()
    fusion = Fusion(background=2, gamma=0.5, temperature=0.5, calibration="decoder") if fused else None
    return fit(pspnet_without_dropout(), data, class_weights(3, 2, 0.1), params, out, info, ignore_index=-1,
               fusion=fusion)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("ckpt_dir")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--fused", action="store_true", help="PseudoSeg's fused soft labels instead of label maps")
    p.add_argument("--mdp", default=None, metavar="DEMO_ROOT", help="MDP's objective on this demo tree")
    p.add_argument("--ms3", nargs=2, default=None, metavar=("DEMO_ROOT", "VECTORS"),
                   help="MS3's objective on this demo tree with these class vectors (pssl embed-classes)")
    args = p.parse_args()
    configure_logging()
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    params = TrainSettings(epochs=args.epochs, batch_size=4, lr=0.02, schedule="step", milestone=1,
                           checkpoint_every=args.checkpoint_every, freeze_bn=True, sync_bn=False, seed=0)
    if args.mdp or args.ms3:
        model = fit_multi(pspnet_without_dropout(), args.mdp or args.ms3[0], params, args.ckpt_dir, info, args.ms3 and args.ms3[1])
    else:
        model = fit_squares(params, args.ckpt_dir, info, fused=args.fused)
    if info.main:
        torch.save(model.state_dict(), args.out)
    del model
    shutdown(info)


if __name__ == "__main__":
    main()
