"""Figure 3 as the paper draws it (issue 29): the first three val images plus the first showing 'person', and
four columns: image, ground truth, prediction, legend."""

import numpy as np
import pytest

from pssl.report.figure3 import COLUMNS, Row, draw, figure_rows


class Labels:
    """A val split reduced to what figure_rows reads: the dataset's classes and each image's train ids."""

    class spec:
        title, classes = "VOC-Aug", ("background", "cat", "person")

    def __init__(self, has_person: list[bool]):
        self.labels = [np.array([[0, 1], [2 if p else 1, 255]], dtype=np.uint8) for p in has_person]

    def __len__(self):
        return len(self.labels)

    def read(self, i):
        return np.zeros((2, 2, 3), np.uint8), self.labels[i]


def test_rows_are_the_first_images_and_the_first_with_the_class():
    assert figure_rows(Labels([False] * 4 + [True, True]), 3, "person") == [0, 1, 2, 4]
    assert figure_rows(Labels([False, True, False, True]), 3, "person") == [0, 1, 2]  # already shown
    assert figure_rows(Labels([False] * 5), 3, "person") == [0, 1, 2]  # none shows it
    assert figure_rows(Labels([True] * 2), 3, "person") == [0, 1]  # a split shorter than 3
    assert figure_rows(Labels([False, False, False, True]), 3, None) == [0, 1, 2]
    with pytest.raises(ValueError, match="'dog' is not a class of VOC-Aug"):
        figure_rows(Labels([True]), 3, "dog")


def test_four_columns_and_the_legends_name_prediction_and_truth():
    # ImageNet classes 0..2 (K = 3, background 3); the prediction covers class 2 most, then 0, then background
    pred = np.array([[2, 2, 2], [0, 0, 3]])
    truth = np.array([[1, 1, 1], [2, 0, 255]], dtype=np.uint8)  # cat x3, person, background, unlabelled
    rows = [Row(np.zeros((2, 3, 3), np.uint8), truth, pred, "a.jpg"),
            Row(np.zeros((2, 3, 3), np.uint8), truth, pred, "b.jpg: the first showing person")]
    fig = draw(rows, ["tench", "goldfish", "shark"], ("background", "cat", "person"), "Figure 3", named=2)
    assert COLUMNS == ("image", "ground truth", "prediction", "legend") and len(fig.axes) == 2 * 4
    image, ground_truth, prediction, legend = fig.axes[4:8]
    assert image.get_title() == "b.jpg: the first showing person" and ground_truth.get_title() == "ground truth"
    assert prediction.get_title() == "prediction: 83% of pixels in an ImageNet class"  # 5 of 6 pixels
    texts = [[t.get_text() for t in box.get_texts()] for box in legend.get_children()
             if box.__class__.__name__ == "Legend"]
    # largest first; a tie (person and the dataset's background, 1 pixel each) by class id; 255 is not a class
    assert texts == [["shark", "tench", "background"], ["cat", "background", "person"]]
