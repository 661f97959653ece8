"""The truncated-BPTT trainer: the book's batching, learning, evaluation, exact resumption."""

import math

import numpy as np
import pytest

from pylstm.models import BetterRnnlm, Rnnlm
from pylstm.optimizers import SGD, Adam
from pylstm.trainer import RnnlmTrainer, batch_indices, eval_perplexity


def _book_batch(xs, batch_size, time_size, time_idx):
    data_size = len(xs)
    bx = np.empty((batch_size, time_size), dtype="i")
    jump = data_size // batch_size
    offsets = [i * jump for i in range(batch_size)]
    for t in range(time_size):
        for i, off in enumerate(offsets):
            bx[i, t] = xs[(off + time_idx) % data_size]
        time_idx += 1
    return bx


def test_batches_equal_the_books():
    xs = np.arange(103) * 7
    for start in (0, 5, 100):
        np.testing.assert_array_equal(xs[batch_indices(len(xs), 4, 6, start)], _book_batch(xs, 4, 6, start))


def _corpus(n=3000, V=12, seed=0):
    # A learnable sequence: mostly a fixed cycle with some noise.
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(V), n // V + 1)[:n]
    noise = rng.random(n) < 0.1
    base[noise] = rng.integers(0, V, noise.sum())
    return base.astype(np.int32)


def test_fit_learns_and_logs(capsys):
    c = _corpus()
    m = Rnnlm(12, 8, 16, seed=0)
    tr = RnnlmTrainer(m, Adam(0.01))
    tr.fit(c[:-1], c[1:], max_epoch=3, batch_size=5, time_size=10, max_grad=5.0, eval_interval=10,
           progress=False)
    out = capsys.readouterr().out
    assert "| epoch 1 |  iter 1 / " in out and "perplexity" in out
    assert tr.ppl_list[-1] < 0.5 * tr.ppl_list[0]
    ppl = eval_perplexity(m, c, batch_size=5, time_size=10)
    assert ppl < 4.0  # the cycle with 10% noise; uniform guessing would be 12


def test_eval_perplexity_equals_books_loop():
    c = _corpus(500)
    m = Rnnlm(12, 4, 6, seed=1)
    got = eval_perplexity(m, c, batch_size=3, time_size=7)
    n = len(c)
    max_iters = (n - 1) // 21
    jump = (n - 1) // 3
    total = 0.0
    m.reset_state()
    for it in range(max_iters):
        xs = np.zeros((3, 7), np.int32)
        ts = np.zeros((3, 7), np.int32)
        offs = [it * 7 + i * jump for i in range(3)]
        for t in range(7):
            for i, off in enumerate(offs):
                xs[i, t] = c[(off + t) % n]
                ts[i, t] = c[(off + t + 1) % n]
        total += m.forward(xs, ts, train_flg=False)
    assert got == pytest.approx(math.exp(total / max_iters), rel=1e-12)


def test_resume_continues_exactly(tmp_path):
    c = _corpus(2000, seed=3)
    kw = dict(batch_size=4, time_size=8, max_grad=1.0, eval_interval=5, progress=False, val_corpus=c[:300])

    def make():
        m = BetterRnnlm(12, 8, 8, dropout_ratio=0.3, seed=5)
        return m, RnnlmTrainer(m, Adam(0.01), log=lambda s: None)

    m1, t1 = make()
    t1.fit(c[:-1], c[1:], max_epoch=2, **kw)

    ck = str(tmp_path / "ck.npz")
    m2, t2 = make()
    t2.fit(c[:-1], c[1:], max_epoch=1, checkpoint=ck, **kw)
    m3, t3 = make()
    t3.resume(ck)
    assert t3.current_epoch == 1
    t3.fit(c[:-1], c[1:], max_epoch=2, **kw)
    assert t3.ppl_list == t1.ppl_list
    assert t3.val_ppl_list == t1.val_ppl_list
    for a, b in zip(m1.params, m3.params):
        np.testing.assert_array_equal(a, b)


def test_lr_decays_when_validation_stops_improving():
    c = _corpus(1500, seed=4)
    m = Rnnlm(12, 4, 6, seed=2)
    tr = RnnlmTrainer(m, SGD(1e-12), log=lambda s: None)  # updates vanish in float32
    tr.fit(c[:-1], c[1:], max_epoch=3, batch_size=4, time_size=5, eval_interval=None, val_corpus=c,
           lr_decay=0.5, progress=False)
    assert tr.optimizer.lr < 1e-12


@pytest.mark.parametrize("xs,msg", [(np.zeros(0, np.int32), "^xs"), (np.zeros(10, np.int32), "^xs"),
                                    (np.zeros((50, 2), np.int32), "^xs"), (np.zeros(50), "^xs")])
def test_fit_rejects_bad_corpora(xs, msg):
    tr = RnnlmTrainer(Rnnlm(12, 4, 4), SGD(1.0))
    with pytest.raises(ValueError, match=msg):
        tr.fit(xs, xs, batch_size=4, time_size=5)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    c = _corpus(600)
    tr = RnnlmTrainer(Rnnlm(12, 4, 4, seed=0), SGD(1.0), log=lambda s: None)
    tr.fit(c[:-1], c[1:], max_epoch=1, batch_size=3, time_size=5, eval_interval=2, progress=False)
    path = tr.plot(str(tmp_path / "p.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_rejects_a_model_file_or_another_optimizer_and_changes_nothing(tmp_path):
    from pylstm.models import CheckpointError
    from pylstm.optimizers import Momentum

    c = _corpus(600, seed=3)
    m = Rnnlm(12, 4, 4, seed=1)
    tr = RnnlmTrainer(m, Adam(0.01), log=lambda s: None)
    ck = str(tmp_path / "ck.npz")
    tr.fit(c[:-1], c[1:], max_epoch=1, batch_size=4, time_size=5, eval_interval=None, checkpoint=ck,
           progress=False)
    plain = str(tmp_path / "model.npz")
    m.save(plain)
    for path, opt, msg in ((plain, Adam(0.01), "not a trainer checkpoint"), (ck, Momentum(0.1), "Adam")):
        m2 = Rnnlm(12, 4, 4, seed=7)
        before = [p.copy() for p in m2.params]
        t2 = RnnlmTrainer(m2, opt, log=lambda s: None)
        with pytest.raises(CheckpointError, match=msg):
            t2.resume(path)
        for a, b in zip(m2.params, before):
            np.testing.assert_array_equal(a, b)
        assert t2.time_idx == 0 and t2.current_epoch == 0


def test_perplexity_of_a_diverged_run_is_inf_not_an_error():
    from pylstm.trainer import perplexity

    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf


def test_resume_with_malformed_trainer_state_changes_nothing(tmp_path):
    import json

    from pylstm.models import CheckpointError

    c = _corpus(600, seed=3)
    m = BetterRnnlm(12, 4, 4, dropout_ratio=0.2, seed=1)
    tr = RnnlmTrainer(m, Adam(0.01), log=lambda s: None)
    ck = str(tmp_path / "ck.npz")
    tr.fit(c[:-1], c[1:], max_epoch=1, batch_size=4, time_size=5, eval_interval=None, checkpoint=ck,
           progress=False)
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    edits = {
        "time_idx": lambda e, a: e.update(time_idx="x"),
        "opt_lr": lambda e, a: e.pop("opt_lr"),
        "rng": lambda e, a: e.update(rng=[{"bit_generator": "nonsense"}] * len(e["rng"])),
        "rng_count": lambda e, a: e.update(rng=e["rng"][:1]),
        "lstm_state": lambda e, a: a.update(extra_lstm0_h=a["extra_lstm0_h"][:, :2]),
        "opt_state_shape": lambda e, a: a.update(extra_opt_m_1=a["extra_opt_m_1"][:1]),
    }
    for name, edit in edits.items():
        extra = json.loads(json.dumps(meta["extra"]))
        arr = dict(arrays)
        edit(extra, arr)
        arr["meta"] = np.frombuffer(json.dumps({**meta, "extra": extra}).encode(), dtype=np.uint8)
        bad = str(tmp_path / f"{name}.npz")
        np.savez(bad, **arr)
        m2 = BetterRnnlm(12, 4, 4, dropout_ratio=0.2, seed=9)
        before = [p.copy() for p in m2.params]
        t2 = RnnlmTrainer(m2, Adam(0.01), log=lambda s: None)
        with pytest.raises(CheckpointError, match="malformed trainer state"):
            t2.resume(bad)
        for a, b in zip(m2.params, before):
            np.testing.assert_array_equal(a, b)
        assert t2.time_idx == 0 and t2.optimizer.m is None, name


def _trainer_checkpoint(tmp_path):
    import json

    c = _corpus(600, seed=3)
    m = BetterRnnlm(12, 4, 4, dropout_ratio=0.2, seed=1)
    tr = RnnlmTrainer(m, Adam(0.01), log=lambda s: None)
    ck = str(tmp_path / "ck.npz")
    tr.fit(c[:-1], c[1:], max_epoch=1, batch_size=4, time_size=5, eval_interval=None, checkpoint=ck,
           progress=False)
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(arrays["meta"].tobytes().decode())


_INF, _NAN = float("inf"), float("nan")
# (field the message must name, edit of the JSON extra and/or the arrays)
RESUME_EDITS = {
    "time_idx_negative": ("time_idx", lambda e, a: e.update(time_idx=-5)),
    "time_idx_inf": ("time_idx", lambda e, a: e.update(time_idx=_INF)),
    "time_idx_fraction": ("time_idx", lambda e, a: e.update(time_idx=2.5)),
    "time_idx_bool": ("time_idx", lambda e, a: e.update(time_idx=True)),
    "time_idx_huge": ("time_idx", lambda e, a: e.update(time_idx=2**70)),
    "epoch_negative": ("epoch", lambda e, a: e.update(epoch=-1)),
    "epoch_nan": ("epoch", lambda e, a: e.update(epoch=_NAN)),
    "loss_sum_nan": ("loss_sum", lambda e, a: e.update(loss_sum=_NAN)),
    "loss_sum_inf": ("loss_sum", lambda e, a: e.update(loss_sum=_INF)),
    "loss_sum_negative": ("loss_sum", lambda e, a: e.update(loss_sum=-1.0)),
    "loss_sum_str": ("loss_sum", lambda e, a: e.update(loss_sum="1.0")),
    "loss_count_negative": ("loss_count", lambda e, a: e.update(loss_count=-3)),
    "ppl_list_str": ("ppl_list", lambda e, a: e.update(ppl_list="12")),
    "ppl_list_nan": ("ppl_list", lambda e, a: e.update(ppl_list=[3.0, _NAN])),
    "ppl_list_dict": ("ppl_list", lambda e, a: e.update(ppl_list={"a": 1.0})),
    "val_ppl_list_negative": ("val_ppl_list", lambda e, a: e.update(val_ppl_list=[-1.0])),
    "opt_lr_nan": ("opt_lr", lambda e, a: e.update(opt_lr=_NAN)),
    "opt_lr_zero": ("opt_lr", lambda e, a: e.update(opt_lr=0.0)),
    "opt_lr_inf": ("opt_lr", lambda e, a: e.update(opt_lr=_INF)),
    "opt_iter_negative": ("opt_iter", lambda e, a: e.update(opt_iter=-1.0)),
    "opt_iter_inf": ("opt_iter", lambda e, a: e.update(opt_iter=_INF)),
    "opt_state_complex": ("opt_m_1", lambda e, a: a.update(extra_opt_m_1=a["extra_opt_m_1"].astype(np.complex64))),
    "opt_state_int": ("opt_v_0", lambda e, a: a.update(extra_opt_v_0=a["extra_opt_v_0"].astype(np.int32))),
    "opt_state_bool": ("opt_v_0", lambda e, a: a.update(extra_opt_v_0=a["extra_opt_v_0"] > 0)),
    "lstm_state_complex": ("lstm0_h", lambda e, a: a.update(extra_lstm0_h=a["extra_lstm0_h"].astype(np.complex128))),
    "lstm_state_int": ("lstm1_c", lambda e, a: a.update(extra_lstm1_c=a["extra_lstm1_c"].astype(np.int64))),
    "lstm_state_empty": ("lstm0_h", lambda e, a: a.update(extra_lstm0_h=a["extra_lstm0_h"][:0],
                                                          extra_lstm0_c=a["extra_lstm0_c"][:0])),
    "rng_overflow": ("rng", lambda e, a: e["rng"][0]["state"].update(state=_INF)),
    "rng_not_list": ("rng", lambda e, a: e.update(rng=7)),
}


@pytest.mark.parametrize("case", sorted(RESUME_EDITS))
def test_resume_checks_every_trainer_field(tmp_path, case):
    """Each value the trainer takes from a checkpoint is checked for type and range first: a
    CheckpointError naming the field (never OverflowError/TypeError/KeyError), nothing changed."""
    import json

    from pylstm.models import CheckpointError

    arrays, meta = _trainer_checkpoint(tmp_path)
    field, edit = RESUME_EDITS[case]
    extra = json.loads(json.dumps(meta["extra"]))
    arr = dict(arrays)
    edit(extra, arr)
    arr["meta"] = np.frombuffer(json.dumps({**meta, "extra": extra}).encode(), dtype=np.uint8)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, **arr)
    m2 = BetterRnnlm(12, 4, 4, dropout_ratio=0.2, seed=9)
    before = [p.copy() for p in m2.params]
    t2 = RnnlmTrainer(m2, Adam(0.01), log=lambda s: None)
    with pytest.raises(CheckpointError, match=rf"\b{field}\b"):
        t2.resume(bad)
    for a, b in zip(m2.params, before):
        np.testing.assert_array_equal(a, b)
    assert t2.time_idx == 0 and t2.current_epoch == 0 and t2.optimizer.m is None and t2.optimizer.lr == 0.01


@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "peephole", "gru"])
def test_other_cells_learn_and_resume_exactly(tmp_path, cell):
    """A language model of vanilla RNN or GRU layers (the state carried is h alone) or of
    peephole LSTM layers (h, c and the peepholes P) trains, and its checkpoint resumes exactly."""
    from pylstm.models import LstmLM

    c = _corpus(2000, seed=4)
    kw = dict(batch_size=4, time_size=8, max_grad=1.0, eval_interval=5, progress=False, val_corpus=c[:300])

    def make():
        m = LstmLM(12, 8, 16, num_layers=2, dropout_ratio=0.2, cell=cell, seed=6)
        return m, RnnlmTrainer(m, Adam(0.01), log=lambda s: None)

    m1, t1 = make()
    t1.fit(c[:-1], c[1:], max_epoch=2, **kw)
    assert t1.ppl_list[-1] < 0.6 * t1.ppl_list[0]
    assert m1.lstm_layers[0].params[1].shape == (16, {"peephole": 64, "gru": 48}.get(cell, 16))
    if cell == "peephole":  # the peepholes were trained too
        assert m1.lstm_layers[0].params[3].shape == (3, 16) and np.abs(m1.lstm_layers[0].params[3]).max() > 0
    ck = str(tmp_path / "ck.npz")
    m2, t2 = make()
    t2.fit(c[:-1], c[1:], max_epoch=1, checkpoint=ck, **kw)
    m3, t3 = make()
    t3.resume(ck)
    t3.fit(c[:-1], c[1:], max_epoch=2, **kw)
    assert t3.ppl_list == t1.ppl_list
    for a, b in zip(m1.params, m3.params):
        np.testing.assert_array_equal(a, b)


def test_fit_after_predict_on_another_batch_size():
    m = Rnnlm(12, 4, 4, seed=0)
    m.predict(np.zeros((3, 4), np.int32))  # leaves a state of batch 3
    c = _corpus(600)
    tr = RnnlmTrainer(m, SGD(0.1), log=lambda s: None)
    tr.fit(c[:-1], c[1:], max_epoch=1, batch_size=5, time_size=5, progress=False, eval_interval=None)
    assert m.lstm_layers[0].h.shape[0] == 5


def test_plot_history_survives_resume_and_marks_lr_changes(tmp_path):
    pytest.importorskip("matplotlib")
    c = _corpus(1200)
    schedule = [0.01, 0.01, 0.002]

    def make():
        m = Rnnlm(12, 4, 8, seed=1)
        return RnnlmTrainer(m, Adam(0.01), log=lambda s: None)

    kw = dict(batch_size=4, time_size=8, eval_interval=5, progress=False, val_corpus=c[:300],
              lr_schedule=lambda e: schedule[e])
    full = make()
    full.fit(c[:-1], c[1:], max_epoch=3, **kw)
    assert full.lr_list == schedule and len(full.epoch_marks) == 3
    assert full.epoch_marks[-1] == len(full.ppl_list)
    half = make()
    ck = str(tmp_path / "ck.npz")
    half.fit(c[:-1], c[1:], max_epoch=1, checkpoint=ck, **kw)
    resumed = make()
    resumed.resume(ck)
    resumed.fit(c[:-1], c[1:], max_epoch=3, **kw)
    assert resumed.epoch_marks == full.epoch_marks and resumed.lr_list == full.lr_list
    out = resumed.plot(str(tmp_path / "p.png"), test_ppl=5.0, baseline=11.0)
    assert (tmp_path / "p.png").stat().st_size > 1000 and out.endswith("p.png")


def test_max_steps_stops_mid_epoch_and_resume_continues_exactly(tmp_path):
    c = _corpus(2000, seed=5)
    kw = dict(batch_size=4, time_size=8, max_grad=1.0, eval_interval=3, progress=False, val_corpus=c[:300])

    def make():
        m = BetterRnnlm(12, 8, 8, dropout_ratio=0.2, seed=7)
        return m, RnnlmTrainer(m, Adam(0.01), log=lambda s: None)

    m1, t1 = make()
    t1.fit(c[:-1], c[1:], max_epoch=2, **kw)
    assert not t1.stopped_early
    ck = str(tmp_path / "ck.npz")
    m2, t2 = make()
    t2.fit(c[:-1], c[1:], max_epoch=2, checkpoint=ck, max_steps=70, **kw)  # 62 iterations an epoch
    assert t2.stopped_early and t2.current_epoch == 1 and t2.epoch_iter == 8
    m3, t3 = make()
    t3.resume(ck)
    t3.fit(c[:-1], c[1:], max_epoch=2, **kw)
    assert t3.ppl_list == t1.ppl_list and t3.val_ppl_list == t1.val_ppl_list
    for a, b in zip(m1.params, m3.params):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="^max_time must be"):
        t3.fit(c[:-1], c[1:], max_epoch=3, max_time=-1, **kw)


def test_clip_value_clamps_every_gradient_element_before_the_update():
    """fit(clip_value=v) with plain SGD (lr 1): no parameter moves by more than v per step."""
    from pylstm.models import LstmLM
    from pylstm.optimizers import SGD

    c = _corpus(600, seed=5)
    m = LstmLM(12, 8, 16, cell="gru", seed=2)
    before = [p.copy() for p in m.params]
    t = RnnlmTrainer(m, SGD(1.0), log=lambda s: None)
    t.fit(c[:-1], c[1:], max_epoch=1, batch_size=4, time_size=8, clip_value=1e-4, progress=False,
          eval_interval=None, max_steps=3)
    moved = max(float(np.abs(p - q).max()) for p, q in zip(m.params, before))
    assert 0 < moved <= 3 * 1e-4 * 1.01  # (plus the float32 rounding of the updated parameters)
    with pytest.raises(ValueError, match="^clip_value must be a finite number > 0"):
        t.fit(c[:-1], c[1:], max_epoch=2, batch_size=4, time_size=8, clip_value=-1.0, progress=False)


class _DenseSGD(SGD):
    """SGD through the generic path: clip_grads, then update over every element."""

    def update(self, params, grads):
        super().update(params, grads)


@pytest.mark.parametrize("tie", [False, True])
def test_plain_sgd_with_sparse_embedding_rows_trains_what_the_dense_update_trains(tie):
    """Plain SGD in one process reads and updates the embedding only in the rows each batch
    touched, with clipping's factor inside the update's one pass: the same training as the
    dense clip-then-update, to the rounding of the norm's order (float64), tied or not."""
    from pylstm.models import LstmLM

    c = _corpus(900, seed=7)
    runs = []
    for opt in (SGD(2.0), _DenseSGD(2.0)):
        m = LstmLM(30, 16, 16, num_layers=2, tie_weights=tie, seed=4)
        m._map_params(lambda p: p.astype(np.float64))
        t = RnnlmTrainer(m, opt, log=lambda s: None)
        t.fit(c[:-1], c[1:], max_epoch=1, batch_size=4, time_size=8, max_grad=0.05, progress=False,
              eval_interval=None, max_steps=12)
        assert not m.layers[0].sparse_grad  # (fit leaves the layer as it found it)
        assert (m.layers[0].grad_rows is not None) == (type(opt) is SGD)  # (the path taken)
        runs.append([p.copy() for p in m.params])
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
