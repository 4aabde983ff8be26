"""What a multi-dataset pre-training (mdp/<model>/final.pt, ms3/<model>/final.pt) says about its classes:
which classes of different datasets ended up close. MDP: a CSV of each class's nearest classes of the other
datasets (cosine of the L2-normalised prototypes) and a heatmap of the cross-dataset similarity matrix. MS3:
the multi-label mapping at the end (each class and the other datasets' classes it pulls toward, as MS3's
Table 8) and the heatmap of its class vectors' (the text embeddings') similarity."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pssl.errors import InputError  # noqa: E402
from pssl.io import atomic_file  # noqa: E402

log = logging.getLogger(__name__)

NEAREST = 3  # other-dataset classes listed per class


def load_prototypes(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, the dataset of each, (K, D) prototypes) of the classes the memory held at the end."""
    import torch
    record = torch.load(path, map_location="cpu", weights_only=True)
    if record.get("kind") != "mdp-pretrain":
        raise InputError(f"{path} is not an MDP pre-training (kind {record.get('kind')!r})")
    cfg, present = record["config"], record["present"].numpy()
    keep = np.flatnonzero(present)
    classes = [cfg["classes"][k] for k in keep]
    datasets = ["+".join(cfg["sources"][k]) for k in keep]
    return classes, datasets, record["prototypes"].numpy()[keep].astype(np.float64)


def nearest_across(classes: list[str], datasets: list[str], similarity: np.ndarray, n: int = NEAREST
                   ) -> pd.DataFrame:
    """Each class's n most similar classes of another dataset, most similar first."""
    rows = []
    for i, (cls, ds) in enumerate(zip(classes, datasets)):
        others = [j for j in range(len(classes)) if datasets[j] != ds]
        for rank, j in enumerate(sorted(others, key=lambda j: -similarity[i, j])[:n], start=1):
            rows.append({"class": cls, "dataset": ds, "rank": rank, "nearest": classes[j],
                         "nearest_dataset": datasets[j], "cosine": round(float(similarity[i, j]), 4)})
    return pd.DataFrame(rows, columns=["class", "dataset", "rank", "nearest", "nearest_dataset", "cosine"])


def similarity_figure(classes: list[str], datasets: list[str], vectors: np.ndarray, title: str,
                      figure: str | Path) -> None:
    """Heatmap of the cosine similarity of the first dataset's classes (rows) with the others' (columns)."""
    similarity = vectors @ vectors.T
    names = list(dict.fromkeys(datasets))
    rows = [i for i, d in enumerate(datasets) if d == names[0]]
    cols = [i for i, d in enumerate(datasets) if d != names[0]] or rows
    short = [c.split("/", 1)[-1] for c in classes]
    fig, ax = plt.subplots(figsize=(min(2 + 0.18 * len(cols), 40), min(2 + 0.18 * len(rows), 40)))
    image = ax.imshow(similarity[np.ix_(rows, cols)], cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_yticks(range(len(rows)), [short[i] for i in rows], fontsize=6)
    ax.set_xticks(range(len(cols)), [short[i] for i in cols], fontsize=6, rotation=90)
    ax.set_ylabel(names[0])
    ax.set_xlabel(" + ".join(names[1:]) or names[0])
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    with atomic_file(figure) as tmp:
        fig.savefig(tmp, format=Path(figure).suffix.lstrip(".") or "png", dpi=150)
    plt.close(fig)


def write_prototype_similarity(model: str | Path, out: str | Path, figure: str | Path) -> pd.DataFrame:
    """MDP: each class's nearest prototypes of the other datasets, and the similarity heatmap."""
    classes, datasets, protos = load_prototypes(model)
    table = nearest_across(classes, datasets, protos @ protos.T)
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False)
    similarity_figure(classes, datasets, protos, f"MDP prototypes: cosine similarity ({Path(model).parent.name})",
                      figure)
    log.info(f"wrote {out} and {figure}: {len(classes)} prototypes of {', '.join(dict.fromkeys(datasets))}")
    return table


def write_multi_label_mapping(model: str | Path, out: str | Path, figure: str | Path) -> pd.DataFrame:
    """MS3: each class and the other datasets' classes it pulls toward at the end (the mapping is directional:
    a class may pull toward another that does not pull back), and the class vectors' similarity heatmap."""
    import torch
    record = torch.load(model, map_location="cpu", weights_only=True)
    if record.get("kind") != "ms3-pretrain":
        raise InputError(f"{model} is not an MS3 pre-training (kind {record.get('kind')!r})")
    classes, positives = record["config"]["classes"], record["positives"].numpy()
    datasets = ["+".join(s) for s in record["config"]["sources"]]
    text = record["text"].numpy().astype(np.float64)
    rows = [{"class": classes[y], "dataset": datasets[y], "pulls_toward": classes[t], "its_dataset": datasets[t],
             "mutual": bool(positives[t, y]), "text_cosine": round(float(text[y] @ text[t]), 4)}
            for y in range(len(classes)) for t in np.flatnonzero(positives[y]) if t != y]
    table = pd.DataFrame(rows, columns=["class", "dataset", "pulls_toward", "its_dataset", "mutual", "text_cosine"])
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False)
    similarity_figure(classes, datasets, text, f"MS3 class vectors: cosine similarity ({Path(model).parent.name})",
                      figure)
    log.info(f"wrote {out} and {figure}: {len(table)} multi-label pairs among {len(classes)} classes")
    return table
