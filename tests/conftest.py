"""pytest configuration: the `cuda` marker is skipped when no GPU backend is usable, `slow`
tests run only when selected (``-m slow``); the fixtures the kernel tests of every cell share."""

import pytest

import pylstm
from helpers import KERNEL_BACKENDS
from pylstm import _backend


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    """Each kernel backend in turn (test files with other backends parametrize their own)."""
    return request.param


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


@pytest.fixture(params=["small-m-kernel", "small-m-kernel+projection-first",
                        "small-m-kernel+step-projection", "small-m-kernel+in-place", "blas"])
def cpu_path(request):
    """The CPU paths of a float32 kernel test: BLAS, and the packed-weight kernel with each forward
    schedule forced (auto picks by shape, so some shapes would otherwise only ever run one), and
    with the weights read in place instead of packed (auto does that for short calls only)."""
    if _backend.cpu is None:
        pytest.skip("no CPU backend")
    kernel, _, variant = request.param.partition("+")
    old = _backend.cpu._set_small_m_kernel(kernel == "small-m-kernel")
    old_schedule = _backend.cpu._set_forward_schedule(variant if variant.endswith("projection") else "auto")
    old_reading = _backend.cpu._set_weight_reading("in-place" if variant == "in-place" else "auto")
    yield request.param
    _backend.cpu._set_small_m_kernel(old)
    _backend.cpu._set_forward_schedule(old_schedule)
    _backend.cpu._set_weight_reading(old_reading)
