"""pytest configuration: the `cuda` marker is skipped when no GPU backend is usable."""

import pytest

import pylstm


def pytest_collection_modifyitems(config, items):
    if "cuda" in pylstm.available_backends():
        return
    skip = pytest.mark.skip(reason="no CUDA backend (not built, or no GPU visible)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
