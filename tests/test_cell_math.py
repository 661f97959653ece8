"""The kernels' own sigmoid and tanh (csrc/common/activations.h, no libm) measured in ulp against numpy."""

import numpy as np
import pytest

import pylstm
from pylstm import _backend
from pylstm import reference as ref

pytestmark = pytest.mark.skipif("cpu" not in pylstm.available_backends(), reason="no CPU backend")


def _ulp_error(got, want):
    return np.abs(got.astype(np.float64) - want.astype(np.float64)) / np.spacing(np.abs(want))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_within_4_ulp(dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(200000) * 4,
        rng.uniform(-1e-3, 1e-3, 20000),
        rng.uniform(-100, 100, 20000),
        np.array([0.0, -0.0, 1e-30, -1e-30, 0.17, 0.35, 0.36, 20.0, -20.0]),
    ]).astype(dtype)
    x64 = x.astype(np.float64)
    # Rounded float64 truths are exact to well under an ulp of dtype for float32; for float64
    # the numpy functions are themselves ~1 ulp, which the bound includes.
    tanh_err = _ulp_error(_backend.cpu._tanh(x), np.tanh(x64).astype(dtype))
    assert tanh_err.max() <= 4, f"tanh: {tanh_err.max():.1f} ulp at x={x[np.argmax(tanh_err)]!r}"
    s_want = ref.sigmoid_ref(x64).astype(dtype)
    ok = s_want > np.finfo(dtype).tiny * 2**10  # below that the kernel clamps (see common/activations.h)
    sig_err = _ulp_error(_backend.cpu._sigmoid(x)[ok], s_want[ok])
    assert sig_err.max() <= 4, f"sigmoid: {sig_err.max():.1f} ulp"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extremes_and_nan(dtype):
    x = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30], dtype=dtype)
    s = _backend.cpu._sigmoid(x)
    t = _backend.cpu._tanh(x)
    assert s[0] == 1.0 and 0.0 <= s[1] < 1e-30 and np.isnan(s[2]) and s[3] == 1.0 and s[4] < 1e-30
    assert t[0] == 1.0 and t[1] == -1.0 and np.isnan(t[2]) and t[3] == 1.0 and t[4] == -1.0
