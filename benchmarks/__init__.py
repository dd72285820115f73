"""Kernel, training and embedding benchmarks: ``python -m benchmarks.<name>`` from the repo root.

Each prints a table and can write JSON (``--json out.json``) with the device name and the
library versions; every kernel is compared with PyTorch's own paths in the same run.
"""
