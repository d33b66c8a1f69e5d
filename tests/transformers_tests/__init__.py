"""transformers' own shared model tests, run on ClusTR by tests/test_transformers_common.py.

`make install` runs fetch.py, which extracts `tests/test_*_common.py` of the installed transformers version from its
source distribution into this folder (git-ignored). The sdist lacks a few modules those files import; the
`exporters`, `generation` and `utils` folders here are small stand-ins of our own for them.
"""
