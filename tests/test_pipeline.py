"""pipeline("image-classification") with ClusTR on real photos: top-k labels from id2label, scores from the logits."""

import PIL.Image
import pytest
import torch
from conftest import tiny_config
from skimage import data
from transformers import pipeline

from clustr_hf import ClusTRForImageClassification, ClusTRImageProcessor


LABELS = {0: "astronaut", 1: "cat", 2: "coffee", 3: "rocket", 4: "coins"}


@pytest.fixture(scope="module")
def classify():
    torch.manual_seed(0)
    model = ClusTRForImageClassification(tiny_config(num_labels=len(LABELS), id2label=LABELS)).eval()
    return pipeline("image-classification", model=model, image_processor=ClusTRImageProcessor(size=64))


def expected_top_k(classify, image, k, function):
    """The pipeline's answer computed by hand: the model's logits on the processed image, through `function`."""
    pixel_values = classify.image_processor(image, return_tensors="pt").pixel_values
    with torch.no_grad():
        scores = function(classify.model(pixel_values).logits[0])
    top = scores.topk(k)
    return [(LABELS[int(index)], value.item()) for value, index in zip(top.values, top.indices)]


@pytest.mark.parametrize("name", ["chelsea", "rocket"])
def test_top_k_labels_with_softmax_scores(classify, name):
    image = PIL.Image.fromarray(getattr(data, name)())
    answer = classify(image, top_k=3)
    expected = expected_top_k(classify, image, 3, lambda logits: logits.softmax(-1))
    assert [entry["label"] for entry in answer] == [label for label, _ in expected]
    assert [entry["score"] for entry in answer] == pytest.approx([score for _, score in expected], rel=1e-5)
    full = classify(image, top_k=10)  # clipped to the number of labels; all probabilities
    assert len(full) == len(LABELS) and sum(entry["score"] for entry in full) == pytest.approx(1.0, abs=1e-5)


def test_batch_of_photos_and_sigmoid_scores(classify):
    images = [PIL.Image.fromarray(data.astronaut()), PIL.Image.fromarray(data.coffee())]
    answers = classify(images, top_k=2, function_to_apply="sigmoid")
    assert len(answers) == 2
    for image, answer in zip(images, answers):
        expected = expected_top_k(classify, image, 2, torch.sigmoid)
        assert [(entry["label"], pytest.approx(entry["score"], rel=1e-5)) for entry in answer] == expected
