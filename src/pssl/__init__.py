"""PSSL: pre-training semantic segmentation models on distilled ensembles of SmoothGrad explanations."""

__version__ = "0.1.0"
