"""Smoke test of an installed pylstm wheel, run from outside the source tree: the compiled module
loads (with its BLAS from the scipy-openblas32 wheel), matches the reference, and trains a step."""

import numpy as np

import pylstm
from pylstm import reference as ref
from pylstm.models import Rnnlm
from pylstm.optimizers import SGD
from pylstm.trainer import RnnlmTrainer

assert pylstm.__file__.find("site-packages") > 0, pylstm.__file__
assert "cpu" in pylstm.available_backends(), pylstm.available_backends()
try:  # the emulated CUDA module is for the test suite only
    import pylstm._cuda_emu  # noqa: F401
    raise AssertionError("the wheel ships the test-only module pylstm._cuda_emu")
except ImportError:
    pass
rng = np.random.default_rng(0)
xs, Wx, Wh, b = rng.random((2, 3, 4)), rng.random((4, 20)), rng.random((5, 20)), rng.random(20)
hs = pylstm.lstm_forward(xs, Wx, Wh, b, backend="cpu")[0]
err = abs(hs - ref.lstm_forward_ref(xs, None, None, Wx, Wh, b)[0]).max()
assert err < 1e-12, err
corpus = (np.arange(800) % 7).astype(np.int32)
RnnlmTrainer(Rnnlm(7, 4, 8, seed=0), SGD(0.5), log=lambda s: None).fit(
    corpus[:-1], corpus[1:], max_epoch=1, batch_size=4, time_size=5, progress=False, eval_interval=None)
print("wheel smoke test passed:", pylstm.__file__)
