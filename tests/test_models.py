"""Models: the book's parameter order, tying by identity, whole-model gradients, generation,
checkpoints (atomic, versioned, corrupt/foreign files rejected) and the book's pickle format."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_close
from pylstm.layers import softmax
from pylstm.models import BetterRnnlm, CheckpointError, LstmLM, Rnnlm, load_checkpoint, unique_params


def test_rnnlm_book_parameter_order_and_init():
    m = Rnnlm(vocab_size=50, wordvec_size=8, hidden_size=6, seed=0)
    shapes = [p.shape for p in m.params]
    assert shapes == [(50, 8), (8, 24), (6, 24), (24,), (6, 50), (50,)]
    assert all(p.dtype == np.float32 for p in m.params)
    assert not m.params[3].any() and not m.params[5].any()
    assert 0.005 < m.params[0].std() < 0.02  # the book's randn / 100
    assert [g.shape for g in m.grads] == shapes


def test_better_rnnlm_ties_by_identity():
    m = BetterRnnlm(vocab_size=30, wordvec_size=8, hidden_size=8, seed=0)
    shapes = [p.shape for p in m.params]
    assert shapes == [(30, 8), (8, 32), (8, 32), (32,), (8, 32), (8, 32), (32,), (8, 30), (30,)]
    assert m.params[7].base is m.params[0]
    p, g = unique_params(m.params, m.grads)
    assert len(p) == 8 and p[0] is m.params[0]
    # Equal values are not a tie: an untied model whose output weights happen to equal embed.T
    u = LstmLM(30, 8, 8, num_layers=2, seed=0)
    u.params[-2][...] = u.params[0].T
    assert len(unique_params(u.params, u.grads)[0]) == len(u.params)


def test_tied_gradient_is_the_sum():
    m = BetterRnnlm(vocab_size=20, wordvec_size=6, hidden_size=6, dropout_ratio=0.0, seed=1)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 20, (2, 5)).astype(np.int32)
    ts = rng.integers(0, 20, (2, 5)).astype(np.int32)
    m.forward(xs, ts)
    m.backward()
    _, g = unique_params(m.params, m.grads)
    assert_close("tied grad", g[0], m.grads[0] + m.grads[7].T, 1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_whole_model_gradient_matches_finite_differences(backend):
    m = LstmLM(11, 5, 4, num_layers=2, tie_weights=False, backend=backend, seed=2)
    for i, p in enumerate(m.params):  # float64 copies for a precise check
        m.params[i] = p.astype(np.float64)
    # rebuild layers' references to the float64 arrays
    k = 0
    for layer in m.layers:
        for j in range(len(layer.params)):
            layer.params[j] = m.params[k]
            layer.grads[j] = np.zeros_like(m.params[k])
            k += 1
    m.grads = [g for layer in m.layers for g in layer.grads]
    rng = np.random.default_rng(3)
    xs = rng.integers(0, 11, (3, 4)).astype(np.int32)
    ts = rng.integers(0, 11, (3, 4)).astype(np.int32)

    def loss():
        m.reset_state()
        return m.forward(xs, ts)
    loss()
    m.backward()
    for i in (0, 1, 2, 3, 5, 7, 8):
        p = m.params[i]
        g = m.grads[i].copy()
        num = np.zeros_like(p)
        for idx in list(np.ndindex(p.shape))[:12]:
            keep = p[idx]
            p[idx] = keep + 1e-5
            up = loss()
            p[idx] = keep - 1e-5
            down = loss()
            p[idx] = keep
            num[idx] = (up - down) / 2e-5
        sel = tuple(np.array(list(np.ndindex(p.shape))[:12]).T)
        # Gradients here are ~1e-4 (the book's small embedding init) on a loss of ~2.4:
        # rounding in the differences is ~2.4e-16/1e-5 ~ 3e-11, so 1e-5 relative is safe.
        assert_close(f"grad[{i}]", g[sel], num[sel], 1e-5)


def test_generate_is_seeded_respects_skip_and_top_k():
    m = Rnnlm(vocab_size=12, wordvec_size=4, hidden_size=5, seed=3)
    a = m.generate(1, sample_size=30, seed=7)
    b = m.generate(1, sample_size=30, seed=7)
    assert a == b and len(a) == 30 and a[0] == 1
    s = m.generate([1, 2, 3], skip_ids=[4, 5], sample_size=200, seed=1)
    assert s[:3] == [1, 2, 3] and 4 not in s[3:] and 5 not in s[3:]
    greedy = m.generate(2, sample_size=10, top_k=1, seed=0)
    m.reset_state()
    ids = [2]
    for _ in range(9):
        score = m.predict(np.array([ids], np.int32))[0, -1]
        ids.append(int(np.argmax(score)))
        m.reset_state()
    assert greedy == ids


def test_generate_num_samples_draws_a_batch_from_each_rows_distribution():
    """num_samples sequences in one batch: the prompt first, seeded, skip_ids respected; greedy
    rows equal the one-sequence greedy result; the first sampled token's frequencies over 4000
    rows follow the model's distribution (inverse CDF sampling)."""
    m = LstmLM(12, 6, 8, seed=3)
    rows = m.generate([1, 2], num_samples=5, sample_size=20, seed=4, skip_ids=[7])
    assert len(rows) == 5 and all(len(r) == 20 and r[:2] == [1, 2] for r in rows)
    assert all(7 not in r[2:] for r in rows)
    assert rows == m.generate([1, 2], num_samples=5, sample_size=20, seed=4, skip_ids=[7])
    greedy = m.generate(3, sample_size=9, top_k=1, seed=0)
    assert m.generate(3, sample_size=9, top_k=1, num_samples=3, seed=1) == [greedy] * 3
    m.reset_state()
    p = softmax(m.predict(np.array([[5]], dtype=np.int32))[0, -1].astype(np.float64)[None])[0]
    m.reset_state()
    first = np.array([r[1] for r in m.generate(5, num_samples=4000, sample_size=2, seed=9)])
    freq = np.bincount(first, minlength=12) / 4000
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / 4000), (freq, p)


def test_generate_num_samples_rejects_bad_counts_before_allocating():
    m = LstmLM(12, 6, 8, seed=3)
    for bad in (0, -2, True, 1.5, "3"):
        with pytest.raises(ValueError, match="^num_samples must be an integer >= 1"):
            m.generate(1, num_samples=bad)
    with pytest.raises(ValueError, match=r"^num_samples: 1000000000000 sequences at once need about .* GiB"):
        m.generate(1, num_samples=10**12)


def test_generate_preserves_training_state_and_rejects_bad_ids():
    m = Rnnlm(vocab_size=12, wordvec_size=4, hidden_size=5, seed=3)
    m.predict(np.zeros((3, 2), np.int32))
    h = m.lstm_layers[0].h.copy()
    m.generate(0, sample_size=5, seed=0)
    np.testing.assert_array_equal(m.lstm_layers[0].h, h)
    with pytest.raises(ValueError, match="^start_id"):
        m.generate(12)
    with pytest.raises(ValueError, match="^skip_ids"):
        m.generate(0, skip_ids=range(12))
    with pytest.raises(ValueError, match="^temperature"):
        m.generate(0, temperature=0)


def test_checkpoint_round_trip(tmp_path):
    m = BetterRnnlm(vocab_size=20, wordvec_size=6, hidden_size=6, seed=4)
    path = str(tmp_path / "m.npz")
    m.save(path, extra={"note": "x", "arr": np.arange(3)})
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind
    m2, extra = load_checkpoint(path)
    assert type(m2) is BetterRnnlm and extra["note"] == "x"
    np.testing.assert_array_equal(extra["arr"], np.arange(3))
    for a, b in zip(m.params, m2.params):
        np.testing.assert_array_equal(a, b)
    assert m2.params[7].base is m2.params[0]  # the tie survives loading


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    m = Rnnlm(vocab_size=10, wordvec_size=3, hidden_size=3, seed=5)
    path = str(tmp_path / "m.npz")
    m.save(path)
    before = Path(path).read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        m.save(path)
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


def test_corrupt_truncated_foreign_and_mismatched_checkpoints(tmp_path):
    m = Rnnlm(vocab_size=10, wordvec_size=3, hidden_size=3, seed=5)
    good = str(tmp_path / "good.npz")
    m.save(good)
    data = Path(good).read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    for name in ("trunc.npz", "junk.npz", "foreign.npz"):
        with pytest.raises(CheckpointError):
            load_checkpoint(str(tmp_path / name))
    other = Rnnlm(vocab_size=11, wordvec_size=3, hidden_size=3)
    with pytest.raises(CheckpointError, match="checkpoint is for"):
        other.load_params(good)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.npz"))


def test_book_pickle_loads_position_by_position(tmp_path):
    m = BetterRnnlm(vocab_size=20, wordvec_size=6, hidden_size=6, seed=6)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(p.shape).astype(np.float16) for p in m.params]
    arrays[7] = arrays[0].T  # the book saves the tied view too
    path = tmp_path / "BetterRnnlm.pkl"
    with open(path, "wb") as f:
        pickle.dump(arrays, f)
    m.load_book_params(str(path))
    for p, a in zip(m.params, arrays):
        np.testing.assert_array_equal(p, a.astype(np.float32))
    with open(path, "wb") as f:
        pickle.dump(arrays[:-1], f)
    with pytest.raises(CheckpointError):
        m.load_book_params(str(path))


def test_bad_model_sizes():
    with pytest.raises(ValueError, match="^tie_weights"):
        LstmLM(10, 4, 5, tie_weights=True)
    with pytest.raises(ValueError, match="^hidden_size"):
        LstmLM(10, 4, 0)


def test_torch_state_dict_round_trip_and_errors():
    m = LstmLM(15, 6, 7, num_layers=2, seed=8)
    state = m.lstm_state_dict_torch()
    assert sorted(state) == sorted(f"{n}_l{k}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                                   for k in (0, 1))
    assert state["weight_ih_l1"].shape == (28, 7)
    m2 = LstmLM(15, 6, 7, num_layers=2, seed=9)
    m2.load_lstm_state_dict_torch(state)
    for a, b in zip(m.lstm_layers, m2.lstm_layers):
        for p, q in zip(a.params, b.params):
            np.testing.assert_array_equal(p, q)
    with pytest.raises(KeyError, match="weight_ih_l1"):
        m2.load_lstm_state_dict_torch({k: v for k, v in state.items() if not k.endswith("l1")})
    small = LstmLM(15, 6, 5, num_layers=2).lstm_state_dict_torch()
    before = m2.lstm_layers[0].params[0].copy()
    with pytest.raises(ValueError):
        m2.load_lstm_state_dict_torch(small)
    np.testing.assert_array_equal(m2.lstm_layers[0].params[0], before)


def test_torch_nn_lstm_matches_the_model_layers():
    torch = pytest.importorskip("torch")
    m = LstmLM(15, 6, 7, num_layers=2, seed=10)
    lstm = torch.nn.LSTM(6, 7, num_layers=2, batch_first=True)
    lstm.load_state_dict({k: torch.from_numpy(v) for k, v in m.lstm_state_dict_torch().items()})
    xs = np.random.default_rng(0).integers(0, 15, (3, 5)).astype(np.int32)
    emb = m.layers[0].forward(xs)
    hs = m.lstm_layers[1].forward(m.lstm_layers[0].forward(emb))
    with torch.no_grad():
        out, _ = lstm(torch.from_numpy(emb))
    assert_close("hs", out.numpy(), hs, 1e-5)
    m2 = LstmLM(15, 6, 7, num_layers=2, seed=11)
    m2.load_lstm_state_dict_torch(lstm.state_dict())
    assert_close("Wh", m2.lstm_layers[1].params[1], m.lstm_layers[1].params[1], 1e-7)


def _rewrite(path, out, meta_fn=None, arrays_fn=None):
    """Copy a checkpoint with its metadata and/or arrays edited."""
    import json

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if meta_fn:
        meta = meta_fn(meta)
    if arrays_fn:
        arrays = arrays_fn(arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(out, **arrays)
    return str(out)


def _set(meta, key, value):
    meta = dict(meta)
    meta[key] = value
    return meta


def test_malformed_checkpoints_raise_checkpoint_error_and_change_nothing(tmp_path):
    m = Rnnlm(vocab_size=10, wordvec_size=3, hidden_size=3, seed=5)
    good = str(tmp_path / "good.npz")
    m.save(good)
    cases = {
        "meta_list": dict(meta_fn=lambda meta: [meta]),
        "no_config": dict(meta_fn=lambda meta: {k: v for k, v in meta.items() if k != "config"}),
        "config_str": dict(meta_fn=lambda meta: _set(meta, "config", "x")),
        "config_extra_key": dict(meta_fn=lambda meta: _set(meta, "config", {**meta["config"], "foo": 1})),
        "config_bad_type": dict(meta_fn=lambda meta: _set(meta, "config", {**meta["config"], "hidden_size": "3"})),
        # a corrupt size must not allocate first (10**12 x 3 floats)
        "config_huge": dict(meta_fn=lambda meta: _set(meta, "config", {**meta["config"], "vocab_size": 10**12})),
        # nor loop over a corrupt layer count
        "config_layers": dict(meta_fn=lambda meta: _set(meta, "config", {**meta["config"], "num_layers": 10**12})),
        "param_int": dict(arrays_fn=lambda a: {**a, "param_2": a["param_2"].astype(np.int64)}),
        "param_complex": dict(arrays_fn=lambda a: {**a, "param_2": a["param_2"].astype(np.complex64)}),
        "param_shape": dict(arrays_fn=lambda a: {**a, "param_3": a["param_3"][:-1]}),
    }
    for name, kw in cases.items():
        path = _rewrite(good, tmp_path / f"{name}.npz", **kw)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        other = Rnnlm(vocab_size=10, wordvec_size=3, hidden_size=3, seed=6)
        before = [p.copy() for p in other.params]
        # (a config mismatch is load_params' own error, tested elsewhere)
        if name not in ("config_huge", "config_layers", "config_extra_key", "config_bad_type"):
            with pytest.raises(CheckpointError):
                other.load_params(path)
            for a, b in zip(other.params, before):  # nothing half-loaded
                np.testing.assert_array_equal(a, b)


def test_checkpoint_rejects_object_extras_and_has_normal_permissions(tmp_path):
    m = Rnnlm(vocab_size=10, wordvec_size=3, hidden_size=3, seed=5)
    path = str(tmp_path / "m.npz")
    with pytest.raises(TypeError, match="extra"):
        m.save(path, extra={"x": np.array([{}], dtype=object)})
    assert not os.listdir(tmp_path)
    old = os.umask(0o022)
    try:
        m.save(path)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


@pytest.mark.parametrize("ratio", [-1.0, -1e-9, 1.0, 2.5, float("nan"), float("inf"), True, "0.5", None])
def test_constructors_reject_a_dropout_ratio_outside_0_1(ratio):
    exc = TypeError if isinstance(ratio, (bool, str, type(None))) else ValueError
    with pytest.raises(exc, match="^dropout_ratio"):
        LstmLM(10, 4, 4, dropout_ratio=ratio)
    with pytest.raises(exc, match="^dropout_ratio"):
        BetterRnnlm(10, 4, 4, dropout_ratio=ratio)


@pytest.mark.parametrize("init", [float("inf"), float("nan"), -0.1, 0.0, 1e39, True, "uniform", "0.1", None])
def test_constructor_rejects_a_bad_init(init):
    exc = TypeError if isinstance(init, (bool, type(None))) else ValueError
    with pytest.raises(exc, match="^init"):
        LstmLM(10, 4, 4, init=init)


def test_constructor_takes_a_uniform_init():
    m = LstmLM(10, 4, 4, init=0.05, seed=1)
    assert max(float(np.abs(p).max()) for p in m.params) <= 0.05


@pytest.mark.parametrize("field,value", [("init", float("inf")), ("init", float("-inf")), ("init", float("nan")),
                                         ("init", 1e300), ("init", -1.0), ("init", True), ("init", "x"),
                                         ("dropout_ratio", -1.0), ("dropout_ratio", float("nan")),
                                         ("dropout_ratio", 1.0), ("dropout_ratio", True),
                                         ("dropout_ratio", float("inf"))])
def test_checkpoint_config_values_are_checked(tmp_path, field, value):
    """Every config value is checked for type and range before the model is built: a
    CheckpointError naming the field, never OverflowError or a model that ignores it."""
    m = LstmLM(10, 3, 3, dropout_ratio=0.1, init=0.1, seed=5)
    good = str(tmp_path / "good.npz")
    m.save(good)
    bad = _rewrite(good, tmp_path / "bad.npz",
                   meta_fn=lambda meta: _set(meta, "config", {**meta["config"], field: value}))
    with pytest.raises(CheckpointError, match=f"config {field}"):
        load_checkpoint(bad)


@pytest.mark.parametrize("cell,torch_class,n_params", [("rnn", "RNN", 3), ("gru", "GRU", 4)])
def test_cell_model_checkpoint_generate_and_torch_round_trip(tmp_path, cell, torch_class, n_params):
    torch = pytest.importorskip("torch")
    m = LstmLM(10, 4, 6, num_layers=2, cell=cell, seed=7, init=0.3)
    assert m.config["cell"] == cell and len(m.params) == 1 + n_params * 2 + 2
    path = str(tmp_path / f"{cell}.npz")
    m.save(path)
    m2, _ = load_checkpoint(path)
    assert m2.config == m.config
    for a, b in zip(m.params, m2.params):
        np.testing.assert_array_equal(a, b)
    assert m2.generate(1, sample_size=8, seed=0) == m.generate(1, sample_size=8, seed=0)
    # the layers are torch.nn.RNN's / GRU's: same outputs from the exported state dict
    rnn = getattr(torch.nn, torch_class)(4, 6, num_layers=2, batch_first=True).double()
    rnn.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in m.lstm_state_dict_torch().items()})
    xs = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    h = xs
    for layer in m.lstm_layers:
        layer.reset_state()
        h = layer.forward(h)
    with torch.no_grad():
        want = rnn(torch.from_numpy(xs.astype(np.float64)))[0].numpy()
    assert_close("hs", h, want, rtol=1e-5)
    m3 = LstmLM(10, 4, 6, num_layers=2, cell=cell, seed=8)
    m3.load_lstm_state_dict_torch(rnn.state_dict())
    for a, b in zip(m.lstm_layers, m3.lstm_layers):
        for p, q in zip(a.params, b.params):
            np.testing.assert_allclose(p, q, rtol=1e-6)


def test_peephole_model_checkpoint_and_no_torch_counterpart(tmp_path):
    m = LstmLM(10, 4, 6, num_layers=2, cell="peephole", seed=7)
    assert len(m.params) == 1 + 4 * 2 + 2 and m.lstm_layers[1].params[3].shape == (3, 6)
    assert not any(np.any(layer.params[3]) for layer in m.lstm_layers)  # the book's init: zeros
    for layer in m.lstm_layers:
        layer.params[3][...] = np.random.default_rng(0).standard_normal((3, 6))
    path = str(tmp_path / "peephole.npz")
    m.save(path)
    m2, _ = load_checkpoint(path)
    assert m2.config == m.config
    for a, b in zip(m.params, m2.params):
        np.testing.assert_array_equal(a, b)
    assert m2.generate(1, sample_size=8, seed=0) == m.generate(1, sample_size=8, seed=0)
    u = LstmLM(10, 4, 6, cell="peephole", seed=1, init=0.1)  # uniform init covers P too
    assert 0 < np.abs(u.lstm_layers[0].params[3]).max() <= 0.1
    with pytest.raises(ValueError, match="has no torch.nn counterpart"):
        m.lstm_state_dict_torch()
    # an LSTM config over peephole-sized arrays (and back) is caught before anything is built
    lstm_cfg = _rewrite(path, tmp_path / "as_lstm.npz",
                        meta_fn=lambda meta: _set(meta, "config", {**meta["config"], "cell": "lstm"}))
    with pytest.raises(CheckpointError, match="parameters"):
        load_checkpoint(lstm_cfg)
    with pytest.raises(CheckpointError, match="checkpoint is for"):
        LstmLM(10, 4, 6, num_layers=2, seed=7).load_params(path)


def test_cell_is_checked_and_old_checkpoints_are_lstm(tmp_path):
    names = r"\['gru', 'lstm', 'peephole', 'rnn', 'rnn_relu'\]"
    with pytest.raises(ValueError, match=rf"^cell must be one of {names}, got 'lru'"):
        LstmLM(10, 3, 3, cell="lru")
    m = LstmLM(10, 3, 3, seed=5)
    good = str(tmp_path / "good.npz")
    m.save(good)
    # a checkpoint written before models had a cell loads as the LSTM it is
    old = _rewrite(good, tmp_path / "old.npz", meta_fn=lambda meta: _set(
        meta, "config", {k: v for k, v in meta["config"].items() if k != "cell"}))
    m2, _ = load_checkpoint(old)
    assert m2.config["cell"] == "lstm"
    def with_cell(cell):
        return lambda meta: _set(meta, "config", {**meta["config"], "cell": cell})

    bad = _rewrite(good, tmp_path / "bad.npz", meta_fn=with_cell("lru"))
    with pytest.raises(CheckpointError, match="config cell"):
        load_checkpoint(bad)
    # an RNN config over LSTM-sized arrays is caught by the parameter count
    wrong = _rewrite(good, tmp_path / "wrong.npz", meta_fn=with_cell("rnn"))
    with pytest.raises(CheckpointError, match="parameters"):
        load_checkpoint(wrong)


def test_books_save_params_and_load_params(tmp_path, monkeypatch):
    """The book's pair: float16 pickles in the book's order, default file <ClassName>.pkl; load_params
    reads those and pylstm checkpoints alike."""
    monkeypatch.chdir(tmp_path)
    m = BetterRnnlm(vocab_size=12, wordvec_size=6, hidden_size=6, seed=3)
    m.save_params()
    assert (tmp_path / "BetterRnnlm.pkl").exists()
    with open(tmp_path / "BetterRnnlm.pkl", "rb") as f:
        saved = pickle.load(f)
    assert len(saved) == len(m.params) and all(a.dtype == np.float16 for a in saved)
    m2 = BetterRnnlm(vocab_size=12, wordvec_size=6, hidden_size=6, seed=4)
    assert m2.load_params() == {}
    for p, q in zip(m.params, m2.params):
        np.testing.assert_array_equal(q, p.astype(np.float16).astype(np.float32))
    m.save(str(tmp_path / "ck.npz"), extra={"note": 1})
    assert m2.load_params(str(tmp_path / "ck.npz")) == {"note": 1}


def test_model_input_errors_name_the_argument():
    m = Rnnlm(10, 4, 5, seed=0)
    assert np.isfinite(m.forward([[1, 2, 3]], [[2, 3, 4]]))  # nested lists are ids too
    m.reset_state()
    with pytest.raises(ValueError, match=r"^xs must be a \(N, T\) batch of token ids, got shape \(3,\)"):
        m.predict(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="^ts must have the shape of xs"):
        m.forward([[1, 2]], [[1, 2, 3]])
    with pytest.raises(TypeError, match="^xs must be integer token ids"):
        m.predict(np.zeros((1, 2)))


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match=r"not an \.npz archive"):
        load_checkpoint(str(path))


def test_init_output_bias_is_the_smoothed_log_unigram():
    m = Rnnlm(vocab_size=5, wordvec_size=3, hidden_size=4, seed=0)
    m.init_output_bias(np.array([0, 0, 1, 3, 3, 3], np.int32))
    counts = np.array([2, 1, 0, 3, 0]) + 1.0
    np.testing.assert_allclose(m.params[-1], np.log(counts / counts.sum()), rtol=1e-6)
    with pytest.raises(ValueError, match="^corpus must hold token ids in"):
        m.init_output_bias(np.array([0, 5]))
