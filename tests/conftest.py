import os

# MKL's float32 GEMMs on an AVX-512 CPU (this workplace's AMD EPYC machines) can round differently for
# the same operands depending on where they lie in memory: a worker streaming weights from a pinned slab
# then gave other bits than one with its weights where loading left them, and the tests that compare a
# memory plan's layers or tokens with the full-memory worker's bit for bit failed there (they passed on
# the CPU the suite last ran on). Strict Conditional Numerical Reproducibility keeps the code path
# (AUTO) and removes the dependence on alignment. Set before torch loads MKL; worker processes the
# tests start inherit it.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

pytest_plugins = ["tests.plugins.s3server", "tests.plugins.stack"]
