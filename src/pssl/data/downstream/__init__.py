"""The downstream segmentation datasets: one registered spec per dataset (this folder, one file each) and the
reader they share. Adding a dataset: a new module here, registered with @register_dataset, imported below.

    DATASETS["camvid"].classes, .title, .splits, .layout(root, split), .demo
    SegmentationSet("camvid", root, "test").read(i) -> (RGB, train ids)
"""

# Registration order is the order of Table 3's rows and of the demo's generators: the paper's order.
# isort: off
from pssl.data.downstream import camvid, voc, ade20k, cityscapes  # noqa: F401  (each registers its dataset)
# isort: on
from pssl.data.downstream.base import (
                                       DATASETS,
                                       IGNORE,
                                       DatasetSpec,
                                       SegmentationSet,
                                       layout,
                                       list_pairs,
                                       missing_paths,
                                       register_dataset,
)

__all__ = ["DATASETS", "IGNORE", "DatasetSpec", "SegmentationSet", "layout", "list_pairs", "missing_paths",
           "register_dataset"]
