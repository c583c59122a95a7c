"""CUDA tests (``pytest -m gpu``; skipped without a device). cuBLAS needs this workspace setting, before its first
use in the process, for the bit-identical resume test to be able to ask for deterministic kernels."""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
