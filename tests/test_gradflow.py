"""The gradient-flow experiment: kernels and reference agree, the curves show what DLfS2 ch. 6
describes, and the command writes its plot."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from pylstm.gradflow import gradient_norms


def test_kernels_agree_with_the_reference_and_the_curves_behave():
    got = gradient_norms(steps=30, hidden=16, batch=3, backend="cpu")
    want = gradient_norms(steps=30, hidden=16, batch=3, backend="numpy")
    assert list(got) == list(want)
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, err_msg=name)
    first = got["rnn Wh x0.5"][0]
    assert got["rnn Wh x0.5"][-1] < 1e-6 * first          # vanishes through small weights
    assert got["rnn Wh x2"][-1] > got["rnn Wh x1"][-1] * 1e3  # large weights keep it up
    assert got["lstm dc, b_f=3"][-1] > 0.05 * first        # an open forget gate carries it back
    assert got["lstm dc, b_f=0"][-1] < 1e-2 * got["lstm dc, b_f=3"][-1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="^steps, hidden and batch must be >= 1"):
        gradient_norms(steps=0)
    with pytest.raises(ValueError, match="^scales must be finite numbers > 0"):
        gradient_norms(steps=3, hidden=2, scales=(float("nan"),))


def test_gradflow_command_prints_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "gf.png"
    r = subprocess.run([sys.executable, "-m", "pylstm", "gradflow", "--steps", "12", "--hidden", "8",
                        "--out", str(out)], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                       env=dict(os.environ, PYTHONWARNINGS="error"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("steps back | rnn Wh x0.5 | rnn Wh x1 | rnn Wh x2 | lstm dh, b_f=0")
    assert out.stat().st_size > 1000
