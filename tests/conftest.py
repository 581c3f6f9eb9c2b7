"""Test-wide settings."""

import torch

# The tests run thousands of tiny tensor ops; on a 2-core machine one intra-op thread is several
# times faster than two fighting over the cores (and results do not depend on it).
torch.set_num_threads(1)

import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# latency measurements keep this machine's fastest calibration; the tests keep theirs apart from the user's
os.environ.setdefault(
    "ADAPTCONV_CALIBRATION", str(Path(tempfile.mkdtemp(prefix="adaptconv-test-")) / "calibration.json")
)
