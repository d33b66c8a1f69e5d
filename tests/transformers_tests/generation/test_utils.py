"""Stand-in for transformers' `tests/generation/test_utils.py`, which its sdist lacks.

`ModelTesterMixin` only checks whether a test class derives from `GenerationTesterMixin` (it must exactly when the model
can `generate`); ClusTR cannot, so its test classes do not.
"""


class GenerationTesterMixin:
    """The marker class of generation tests; ClusTR's test classes do not derive from it."""
