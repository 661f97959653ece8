"""pytest configuration: the `cuda` marker is skipped when no GPU backend is usable, and `slow`
tests run only when selected (``-m slow``)."""

import pytest

import pylstm


def pytest_collection_modifyitems(config, items):
    if "slow" not in (config.getoption("markexpr") or ""):
        skip_slow = pytest.mark.skip(reason="slow: select with -m slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    if "cuda" in pylstm.available_backends():
        return
    skip = pytest.mark.skip(reason="no CUDA backend (not built, or no GPU visible)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
