"""Stand-in for transformers' `tests/exporters/test_export.py`, which its sdist lacks.

`ModelTesterMixin` derives from `ExportTesterMixin`; here it adds no tests. ClusTR's torch.export and ONNX export are
tested in tests/test_export.py.
"""


class ExportTesterMixin:
    """No export tests of its own (see the module docstring)."""
