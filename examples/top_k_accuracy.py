"""Top-1 and top-k accuracy as an `evaluate` metric module, kept beside the training scripts so that it loads offline:
`evaluate.load(training_utils.TOP_K_ACCURACY_METRIC)`."""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Top-k accuracy of a classifier: the fraction of samples whose true class is among its k best-ranked classes.
Top-1 accuracy is the usual accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per sample, class indices ranked best first
        (e.g. `logits.topk(5).indices`). Every row has the same length: the largest k, or all classes when there
        are fewer.
    references (`list` of `int`): the true class of each sample.
    k (`tuple` of `int`, defaults to (1, 5)): the k values to report; each is capped at the ranking's length.
Returns:
    `accuracy` (top-1) and `top{k}_accuracy` for every other k, each in [0, 1].
Examples:
    >>> metric = evaluate.load(TOP_K_ACCURACY_METRIC)
    >>> metric.compute(predictions=[[2, 0, 1], [1, 2, 0]], references=[2, 0], k=(1, 3))
    {'accuracy': 0.5, 'top3_accuracy': 1.0}
"""


class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        ranked = np.asarray(predictions, dtype=np.int64).reshape(len(references), -1)
        references = np.asarray(references, dtype=np.int64)
        if len(references) == 0:
            raise ValueError("No predictions to score; evaluate at least one sample.")
        hits = ranked == references[:, None]
        return {
            ("accuracy" if top == 1 else f"top{top}_accuracy"): float(hits[:, :top].any(axis=1).mean())
            for top in k
        }
