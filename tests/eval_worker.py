"""Evaluation run used by test_cluster.py: one process, or several ranks under torchrun that split the images.

    python tests/eval_worker.py DEMO_ROOT OUT.json
"""

import json
import sys

import torch

from pssl.data.downstream import SegmentationSet
from pssl.distributed import init_distributed, shutdown
from pssl.eval.evaluate import evaluate
from pssl.models.segmenter import build_segmenter
from pssl.settings import FinetuneSettings


def main() -> None:
    root, out = sys.argv[1:3]
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    data = SegmentationSet("camvid", root, "val")
    torch.manual_seed(0)
    model = build_segmenter("pspnet", "test_resnet", data.num_classes)
    result = evaluate(model, data, info, FinetuneSettings(scales=(0.75, 1.0), flip=True, base_size=100))
    if info.main:
        with open(out, "w") as f:
            json.dump({**result, "images": len(data), "ranks": info.world}, f)
    shutdown(info)


if __name__ == "__main__":
    main()
