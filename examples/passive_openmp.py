"""Imported first by the scripts, before torch loads OpenMP: idle OpenMP threads sleep instead of spinning for the
cores other threads need, unless OMP_WAIT_POLICY is set already (benchmarks/README.md, OpenMP wait policy)."""

import os


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
