import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))  # tests/helpers: tiny models, tolerances, fixtures
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# at most 2 torch threads (CI's machine), or OMP_NUM_THREADS when set: the suite must hold with 1 thread too
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


def _reduced_precision_sdpa_works() -> bool:
    """torch 2.14's CPU flash attention in bfloat16 / float16 packs with AMX whenever the CPU has it, even when
    ATEN_CPU_CAPABILITY=default / avx2 dispatched its packing kernel without AVX-512 ("pack_vnni2 is only supported
    when avx512 is supported"); a CPU without AMX never takes that path."""
    q = torch.zeros(1, 1, 256, 64, dtype=torch.bfloat16)  # long enough for the blocked kernel
    try:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError as err:
        if "pack_vnni2" not in str(err):
            raise
        return False
    return True


if not _reduced_precision_sdpa_works():  # the math kernel, as the forced capability's CPU would run without AMX
    torch.backends.cuda.enable_flash_sdp(False)  # the flag torch's CPU backend selection reads as well


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
