"""Test-wide settings."""

import torch

# The tests run thousands of tiny tensor ops; on a 2-core machine one intra-op thread is several
# times faster than two fighting over the cores (and results do not depend on it).
torch.set_num_threads(1)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# shared fixture builders (tests/fixtures/*.py) are importable as `fixtures.<module>`
sys.path.insert(0, str(Path(__file__).parent))
