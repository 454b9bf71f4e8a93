import os

import pytest
import torch

# Keep CPU tests quick and repeatable on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
