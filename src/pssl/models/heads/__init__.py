"""The paper's three segmentation heads, one module each; importing this package registers them all."""

from pssl.models.heads import deeplabv3, ocrnet, pspnet  # noqa: F401  (each module registers its head)
