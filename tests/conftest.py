import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))  # tests/helpers: tiny models, tolerances, fixtures
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# at most 2 torch threads (CI's machine), or OMP_NUM_THREADS when set: the suite must hold with 1 thread too
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _isolated_ilf_cache(tmp_path_factory, monkeypatch):
    """Every test sees an empty ILF cache, so nothing silently uses assets from the developer's machine."""
    monkeypatch.setenv("ILF_CACHE", str(tmp_path_factory.mktemp("ilf_cache")))


@pytest.fixture
def one_thread():
    """One torch CPU thread for the test (tiny models: threads only add overhead and noise on 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
