"""model.to(device): moving a model between NumPy and CuPy keeps tying, state and results.
Without a GPU: the "cpu" round trip and the errors; with one (`cuda` marker): training on the GPU
matches training on the CPU."""

import numpy as np
import pytest

from pylstm import _backend
from pylstm.models import BetterRnnlm
from pylstm.optimizers import Adam
from pylstm.trainer import RnnlmTrainer, eval_perplexity


def _corpus(n=2000, V=40, seed=0):
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.integers(1, 3, n)) % V).astype(np.int64)  # a learnable sequence


def test_to_cpu_keeps_tying_and_identity_of_updates():
    m = BetterRnnlm(vocab_size=30, wordvec_size=8, hidden_size=8, dropout_ratio=0.0, seed=0)
    before = [p.copy() for p in m.params]
    assert m.to("cpu") is m and m.device == "cpu"
    assert m.params[7].base is m.params[0]  # still a view of the embedding
    for p, b in zip(m.params, before):
        np.testing.assert_array_equal(p, b)
    assert all(g.shape == p.shape for p, g in zip(m.params, m.grads))
    assert m.layers[0].grads[0] is m.grads[0]  # the model's lists are the layers' lists


def test_to_rejects_unknown_device_and_unavailable_gpu():
    m = BetterRnnlm(vocab_size=10, wordvec_size=4, hidden_size=4, seed=0)
    with pytest.raises(ValueError, match="^device must be 'cpu' or 'cuda'"):
        m.to("tpu")
    if _backend.cuda_status()[0] == 0:
        with pytest.raises(RuntimeError, match="^device 'cuda' is not available"):
            m.to("cuda")
        assert m.device == "cpu"  # nothing moved


@pytest.mark.cuda
def test_training_on_the_gpu_matches_the_cpu():
    cupy = pytest.importorskip("cupy")
    corpus = _corpus()
    results = []
    for device in ("cpu", "cuda"):
        m = BetterRnnlm(vocab_size=40, wordvec_size=16, hidden_size=16, dropout_ratio=0.0, seed=3).to(device)
        tr = RnnlmTrainer(m, Adam(0.01), log=lambda s: None)
        tr.fit(corpus[:-1], corpus[1:], max_epoch=2, batch_size=4, time_size=10, max_grad=1.0,
               eval_interval=5, progress=False)
        if device == "cuda":
            assert isinstance(m.params[0], cupy.ndarray) and m.params[7].base is m.params[0]
        results.append((tr.ppl_list, eval_perplexity(m, corpus, batch_size=4, time_size=10),
                        [np.asarray(p.get() if hasattr(p, "get") else p) for p in m.params]))
    (ppl_c, ev_c, p_c), (ppl_g, ev_g, p_g) = results
    np.testing.assert_allclose(ppl_g, ppl_c, rtol=1e-3)
    assert ev_g == pytest.approx(ev_c, rel=1e-3)
    for a, b in zip(p_g, p_c):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-4)
