"""pylstm.torch: LSTM / GRU / RNN modules against torch.nn's (outputs and every gradient),
gradcheck, state_dict interchange, the once-per-update weight conversion, a training loop, and
bad inputs. Run when torch is installed."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pt = pytest.importorskip("pylstm.torch")

CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"})]


def _pair(mode, kw, *args, **kwargs):
    """(torch.nn module, pylstm.torch module) with the same parameters."""
    ref = getattr(torch.nn, mode)(*args, **kw, **kwargs)
    ours = getattr(pt, mode)(*args, **kw, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _state(mode, L, N, H, dtype, unbatched=False):
    shape = (L, H) if unbatched else (L, N, H)
    h = torch.randn(*shape, dtype=dtype)
    return (h, torch.randn(*shape, dtype=dtype)) if mode == "LSTM" else h


def _clone_state(hx):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(t.detach().clone().requires_grad_() for t in hx)
    return hx.detach().clone().requires_grad_()


def _leaves(hx):
    return [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]


@pytest.mark.parametrize("mode,kw", CASES)
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_outputs_and_every_gradient_match_torch_nn(mode, kw, layers, batch_first, with_hx, bidirectional):
    torch.manual_seed(layers + 10 * batch_first)
    N, T, D, H = 3, 5, 4, 6
    ref, ours = _pair(mode, kw, D, H, num_layers=layers, batch_first=batch_first, dtype=torch.float64,
                      bidirectional=bidirectional)
    x = torch.randn(*((N, T, D) if batch_first else (T, N, D)), dtype=torch.float64)
    hx = _state(mode, layers * (1 + bidirectional), N, H, torch.float64) if with_hx else None
    results = []
    for m in (ref, ours):
        xi, hi = x.clone().requires_grad_(), _clone_state(hx)
        out, st = m(xi, hi)
        h_n = st[0] if mode == "LSTM" else st
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum() + h_n.pow(2).sum()
        if mode == "LSTM":
            loss = loss + 0.5 * st[1].sum()
        loss.backward()
        results.append([out, h_n] + ([st[1]] if mode == "LSTM" else []) + [xi.grad] +
                       [t.grad for t in _leaves(hi)] + [p.grad for p in m.parameters()])
    names = ["output", "h_n"] + (["c_n"] if mode == "LSTM" else []) + ["d input"] + \
        [f"d hx[{i}]" for i in range(len(_leaves(hx)))] + [f"d {n}" for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, *results):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def _packed_loss(out, st, mode):
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
    h_n = st[0] if mode == "LSTM" else st
    w = torch.linspace(-1, 1, padded.numel(), dtype=padded.dtype).reshape(padded.shape)
    loss = (padded * w).sum() + h_n.pow(2).sum()
    return loss + (0.5 * st[1].sum() if mode == "LSTM" else 0.0), padded, h_n


@pytest.mark.parametrize("mode,kw", CASES)
@pytest.mark.parametrize("sort", ["unsorted", "sorted"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_packed_sequences_match_torch_nn(mode, kw, sort, bidirectional, with_hx):
    """PackedSequence in, PackedSequence out (the same data, batch sizes and orderings as
    nn.LSTM's), h_n / c_n at each sequence's own last step in the batch's order, and every
    gradient, for unsorted (enforce_sorted=False) and sorted lengths."""
    torch.manual_seed(7 + bidirectional)
    N, T, D, H, layers = 5, 7, 4, 6, 2
    ref, ours = _pair(mode, kw, D, H, num_layers=layers, batch_first=True, dtype=torch.float64,
                      bidirectional=bidirectional)
    lengths = torch.tensor([3, 7, 1, 5, 7] if sort == "unsorted" else [7, 7, 5, 3, 1])
    x = torch.randn(N, T, D, dtype=torch.float64)
    hx = _state(mode, layers * (1 + bidirectional), N, H, torch.float64) if with_hx else None
    results = []
    for m in (ref, ours):
        xi, hi = x.clone().requires_grad_(), _clone_state(hx)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, batch_first=True,
                                                         enforce_sorted=sort == "sorted")
        out, st = m(packed, hi)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        loss, padded, h_n = _packed_loss(out, st, mode)
        loss.backward()
        results.append([out.data, out.batch_sizes, padded, h_n] + ([st[1]] if mode == "LSTM" else []) +
                       [xi.grad] + [t.grad for t in _leaves(hi)] + [p.grad for p in m.parameters()])
        for a, b in ((out.sorted_indices, packed.sorted_indices), (out.unsorted_indices, packed.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
    names = ["output.data", "batch_sizes", "padded output", "h_n"] + (["c_n"] if mode == "LSTM" else []) + \
        ["d input"] + [f"d hx[{i}]" for i in range(len(_leaves(hx)))] + [f"d {n}" for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, *results):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_packed_gradcheck_float64():
    torch.manual_seed(8)
    m = pt.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True, dtype=torch.float64)
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 4, 1])

    def f(x):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = m(packed)
        return out.data, h, c

    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("mode,kw", CASES[:3])
def test_float32_bias_false_and_unbatched(mode, kw):
    torch.manual_seed(1)
    ref, ours = _pair(mode, kw, 8, 16, num_layers=2, bias=False)
    x = torch.randn(7, 8)  # unbatched (T, D)
    hx = _state(mode, 2, 1, 16, torch.float32, unbatched=True)
    (o1, s1), (o2, s2) = ref(x, hx), ours(x, hx)
    np.testing.assert_allclose(o2.detach().numpy(), o1.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert o2.shape == o1.shape == (7, 16)
    h1, h2 = (s1[0], s2[0]) if mode == "LSTM" else (s1, s2)
    assert h2.shape == h1.shape == (2, 16)
    assert len(list(ours.parameters())) == 4


@pytest.mark.parametrize("mode,kw", CASES[:3])
def test_gradcheck_float64(mode, kw):
    torch.manual_seed(2)
    m = getattr(pt, mode)(3, 4, num_layers=2, batch_first=True, dtype=torch.float64, **kw)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    hx = _clone_state(_state(mode, 2, 2, 4, torch.float64))

    def f(x, *states):
        out, st = m(x, tuple(states) if mode == "LSTM" else states[0])
        return out, (st[0] if mode == "LSTM" else st)

    assert torch.autograd.gradcheck(f, (x, *_leaves(hx)))


@pytest.mark.parametrize("mode,kw", CASES)
def test_state_dict_round_trip_and_no_weight_conversion(mode, kw):
    """state_dict both ways; the kernels read the parameters themselves (no copy per call or
    update) and the weight gradients land in .grad without a copy; updates through .data (no
    version change) and parameters replaced by contiguous tensors are followed."""
    torch.manual_seed(3)
    ours = getattr(pt, mode)(4, 5, num_layers=2, **kw)
    ref = getattr(torch.nn, mode)(4, 5, num_layers=2, **kw)
    ref.load_state_dict(ours.state_dict())  # pylstm -> torch
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = torch.randn(3, 2, 4)

    def same_outputs():
        ref.load_state_dict(ours.state_dict())
        np.testing.assert_allclose(ours(x)[0].detach().numpy(), ref(x)[0].detach().numpy(), rtol=1e-5, atol=1e-6)

    same_outputs()
    w = ours.weight_hh_l1
    assert w.stride() == (1, w.shape[0])  # stored as the kernels' (H, G*H) row-major array
    Wx, Wh = ours._kernel_params(1)[:2]
    assert Wh.data_ptr() == w.data_ptr() and Wh.is_contiguous()
    ours(x)[0].sum().backward()
    assert w.grad.stride() == w.stride()  # the kernel's dWh itself, as a view
    torch.optim.SGD(ours.parameters(), lr=0.1).step()
    same_outputs()
    for p in ours.parameters():  # old-style updates: the version counters do not move
        p.data.add_(0.05)
    same_outputs()
    ours.weight_ih_l0 = torch.nn.Parameter(ours.weight_ih_l0.detach().contiguous() * 1.5)  # contiguous
    ours.bias_hh_l1 = torch.nn.Parameter(ours.bias_hh_l1.detach() - 0.1)
    same_outputs()
    assert ours.double().weight_hh_l1.stride() == w.stride()  # .to() keeps the layout


@pytest.mark.parametrize("mode,kw", CASES)
def test_a_seed_gives_torch_nn_initial_parameters(mode, kw):
    """reset_parameters draws in torch's element order in either layout: the same seed gives
    nn.LSTM's (nn.GRU's, nn.RNN's) values."""
    for layout in ("kernel", "torch"):
        torch.manual_seed(7)
        ref = getattr(torch.nn, mode)(4, 5, num_layers=2, bidirectional=True, **kw)
        torch.manual_seed(7)
        ours = getattr(pt, mode)(4, 5, num_layers=2, bidirectional=True, weight_layout=layout, **kw)
        for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
            assert torch.equal(a, b), f"{layout}: {name}"


@pytest.mark.parametrize("mode,kw", CASES)
def test_contiguous_weight_layout(mode, kw):
    """weight_layout="torch": contiguous weights and gradients, as nn.LSTM's (what .view-based
    code needs: parameters_to_vector, LBFGS), with the same outputs and gradients."""
    torch.manual_seed(6)
    ref = getattr(torch.nn, mode)(4, 5, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    ours = getattr(pt, mode)(4, 5, num_layers=2, bidirectional=True, dtype=torch.float64, weight_layout="torch",
                             **kw)
    ours.load_state_dict(ref.state_dict())
    assert all(p.is_contiguous() for p in ours.parameters())
    assert "weight_layout='torch'" in repr(ours)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    for m in (ref, ours):
        m(x)[0].square().sum().backward()
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
        assert b.grad.is_contiguous(), name
    flat = [torch.nn.utils.parameters_to_vector(m.parameters()).detach().numpy() for m in (ours, ref)]
    np.testing.assert_array_equal(flat[0], flat[1])
    opt = torch.optim.LBFGS(ours.parameters(), max_iter=2)  # (flattens the gradients with .view)

    def closure():
        opt.zero_grad()
        loss = ours(x)[0].square().sum()
        loss.backward()
        return loss

    before = closure().item()
    opt.step(closure)
    assert closure().item() < before
    with pytest.raises(ValueError, match="^weight_layout must be one of"):
        pt.LSTM(4, 5, weight_layout="fortran")


@pytest.mark.parametrize("mode,kw", CASES)
def test_weights_changed_after_the_forward(mode, kw):
    """The converted weights are rewritten in place at the next update: a backward whose forward
    read them refuses a parameter changed in place since (as torch.nn's does), and one whose
    parameter was replaced keeps the weights its forward used."""
    torch.manual_seed(4)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    for m in _pair(mode, kw, 4, 5, dtype=torch.float64):
        out = m(x)[0]
        with torch.no_grad():
            m.weight_hh_l0.mul_(0.5)
        m(x)  # pylstm's module converts the updated weights here
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()
    ref, ours = _pair(mode, kw, 4, 5, dtype=torch.float64)
    out_ref, out = ref(x)[0], ours(x)[0]
    ours.weight_hh_l0 = torch.nn.Parameter(2 * ours.weight_hh_l0.detach())
    ours(x)  # converts the new parameter
    g_ref = torch.autograd.grad(out_ref.sum(), (x, ref.weight_ih_l0))
    g = torch.autograd.grad(out.sum(), (x, ours.weight_ih_l0))
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_word_lm_training_loop_follows_torch_nn(mode):
    """A small PyTorch word LM (embedding, 2-layer recurrent layer, linear, cross-entropy, Adam)
    with nn.LSTM / nn.GRU swapped for pylstm's: the same loss curve. (Without dropout: torch
    draws its masks inside nn.LSTM, so no two implementations share them.)"""
    V, D, H, N, T = 30, 8, 12, 4, 6
    starts = torch.randint(0, V, (20, N, 1), generator=torch.Generator().manual_seed(0))
    data = (starts + 3 * torch.arange(T + 1)) % V  # learnable: each token fixes the next

    def run(rnn_cls):
        torch.manual_seed(5)
        emb, lin = torch.nn.Embedding(V, D).double(), torch.nn.Linear(H, V).double()
        rnn = rnn_cls(D, H, num_layers=2, batch_first=True, dtype=torch.float64)
        params = list(emb.parameters()) + list(rnn.parameters()) + list(lin.parameters())
        return emb, rnn, lin, params

    e1, r1, l1, p1 = run(getattr(torch.nn, mode))
    e2, r2, l2, p2 = run(getattr(pt, mode))
    r2.load_state_dict(r1.state_dict())
    o1, o2 = torch.optim.Adam(p1, lr=0.01), torch.optim.Adam(p2, lr=0.01)
    losses = {1: [], 2: []}
    for batch in data:
        for k, (e, r, lin, opt) in ((1, (e1, r1, l1, o1)), (2, (e2, r2, l2, o2))):
            out, _ = r(e(batch[:, :-1]))
            loss = torch.nn.functional.cross_entropy(lin(out).reshape(-1, V), batch[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[k].append(loss.item())
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-9)
    assert losses[1][-1] < losses[1][0]


def test_bad_inputs():
    m = pt.LSTM(4, 5, num_layers=2, batch_first=True)
    with pytest.raises(ValueError, match="^input must have rank 3"):
        m(torch.randn(2, 3, 4, 1))
    with pytest.raises(ValueError, match="^input must have size 4 in its last dimension"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="^input must have dtype torch.float32 or torch.float64"):
        m(torch.randn(2, 3, 4).half())
    with pytest.raises(TypeError, match="^input has dtype torch.float64 but the parameters have torch.float32"):
        m(torch.randn(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^hx\[0\] must have shape \(2, 2, 5\)"):
        m(torch.randn(2, 3, 4), (torch.zeros(1, 2, 5), torch.zeros(2, 2, 5)))
    with pytest.raises(TypeError, match=r"^hx must be a tuple \(h_0, c_0\)"):
        m(torch.randn(2, 3, 4), torch.zeros(2, 2, 5))
    with pytest.raises(TypeError, match=r"^hx\[1\] must have dtype torch.float32"):
        m(torch.randn(2, 3, 4), (torch.zeros(2, 2, 5), torch.zeros(2, 2, 5, dtype=torch.float64)))
    with pytest.raises(ValueError, match="^input must not be empty"):
        m(torch.randn(0, 3, 4))
    with pytest.raises(ValueError, match=r"^hx\[0\] must have shape \(4, 2, 5\) \(num_layers \* num_directions"):
        pt.LSTM(4, 5, num_layers=2, bidirectional=True)(torch.randn(3, 2, 4), (torch.zeros(2, 2, 5),) * 2)
    with pytest.raises(TypeError, match="^input has dtype torch.float64 but the parameters have torch.float32"):
        m(torch.nn.utils.rnn.pack_padded_sequence(torch.randn(2, 3, 4, dtype=torch.float64), [3, 2],
                                                  batch_first=True))
    with pytest.raises(ValueError, match="^input must have size 4 in its last dimension"):
        m(torch.nn.utils.rnn.pack_padded_sequence(torch.randn(2, 3, 5), [3, 2], batch_first=True))
    with pytest.raises(TypeError, match="^dtype must be torch.float32 or torch.float64"):
        pt.RNN(4, 5, dtype=torch.float16)
    with pytest.raises(ValueError, match="^nonlinearity must be"):
        pt.RNN(4, 5, nonlinearity="gelu")
    with pytest.raises(ValueError, match="^hidden_size must be an integer >= 1"):
        pt.LSTM(4, 0)
    # a non-contiguous input is copied once, never read wrongly
    x = torch.randn(3, 2, 4).transpose(0, 1)
    assert not x.is_contiguous()
    np.testing.assert_array_equal(m(x)[0].detach().numpy(), m(x.contiguous())[0].detach().numpy())


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(4)
    m = pt.GRU(4, 32, num_layers=2, dropout=0.5, batch_first=True)
    ref = torch.nn.GRU(4, 32, num_layers=2, dropout=0.5, batch_first=True)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 5, 4)
    a, b = m(x)[0], m(x)[0]
    assert not torch.equal(a, b)  # training: fresh masks each call
    m.eval()
    ref.eval()
    np.testing.assert_allclose(m(x)[0].detach().numpy(), ref(x)[0].detach().numpy(), rtol=1e-5, atol=1e-6)


_ON_TORCH_THREADS = r"""
import multiprocessing as mp, sys
import numpy as np
import torch
import pylstm, pylstm.torch as pt
from pylstm import _backend
sys.path.insert(0, {tests!r})
from helpers import make_lstm_inputs

def step(d):
    hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend="cpu")
    return [hs, *pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"])]

def child(q):
    refused = not pt.use_torch_threads(True)  # (a forked child keeps its own pool)
    q.put((refused, step(make_lstm_inputs((16, 12, 64, 128), np.float32, seed=1))))

if __name__ == "__main__":
    pylstm.set_num_threads(2)
    torch.set_num_threads(2)
    on = _backend.cpu._openmp_runtime_set()
    d = make_lstm_inputs((16, 12, 64, 128), np.float32, seed=1)
    torch.randn(1000, 1000).mul_(2.0)  # torch's OpenMP threads exist and spin
    omp = step(d)
    # A child forked after kernels ran on torch's threads (and before pylstm's pool ever
    # started) has none of them: it must compute on a pool of its own, not hang in libgomp.
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,), daemon=True)  # (a hung child dies with us)
    p.start()
    refused, got = q.get(timeout=60)  # (before join: the child exits once its result is read)
    p.join(timeout=60)
    bad, caught = _backend.cpu._pool_stress(1500, 4, 7)
    pt.use_torch_threads(False)
    pool = step(d)
    same = all(np.array_equal(a, b) for a, b in zip(omp, pool))
    forked = refused and p.exitcode == 0 and all(np.array_equal(a, b) for a, b in zip(got, pool))
    print(on, bad, caught, same, forked)
"""


def test_kernels_on_torch_openmp_threads(tmp_path):
    """With pylstm.torch imported the CPU kernels run on torch's OpenMP threads (where torch has
    them): the same bits as on pylstm's pool, exceptions and barriers hold under stress, and a
    forked child (which has none of the parent's threads) computes on its own pool. In a
    subprocess with a time limit: a hang fails the test instead of stalling the run."""
    import os
    import subprocess
    import sys

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch build has no OpenMP runtime to share")
    script = tmp_path / "on_torch_threads.py"
    script.write_text(_ON_TORCH_THREADS.replace("{tests!r}", repr(os.path.dirname(__file__))))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    on, bad, caught, same, forked = r.stdout.split()
    assert on == "True"
    assert int(bad) == 0 and 400 < int(caught) < 600
    assert same == "True", "torch's threads and pylstm's pool gave different bits"
    assert forked == "True", "the forked child failed or differed"


def test_kernels_on_a_smaller_openmp_team(tmp_path):
    """An OpenMP thread limit gives teams smaller than asked (here one thread where two are
    asked): every run still runs each of its team's thread indices exactly once, and the kernels
    split their work by the real team, with the bits of two threads on the pool."""
    import os
    import subprocess
    import sys

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch build has no OpenMP runtime to share")
    script = (
        "import numpy as np, torch, pylstm, pylstm.torch as pt\n"
        "from pylstm import _backend\n"
        "assert _backend.cpu._openmp_runtime_set()\n"
        "bad, caught = _backend.cpu._pool_stress(600, 4, 3)\n"
        "pylstm.set_num_threads(2)\n"
        "rng = np.random.default_rng(0)\n"
        "shapes = ((6, 5, 16), (16, 256), (64, 256), (256,))\n"
        "x, Wx, Wh, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)\n"
        "omp = pylstm.lstm_forward(x, Wx, Wh, b)[0]\n"
        "pt.use_torch_threads(False)\n"
        "print(bad, caught, np.array_equal(omp, pylstm.lstm_forward(x, Wx, Wh, b)[0]))\n"
    )
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                       env=env)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    bad, caught, same = r.stdout.split()
    assert int(bad) == 0
    assert 30 < int(caught) < 130  # a third of the runs inject, a third of those on thread 0
    assert same == "True"


@pytest.mark.cuda
@pytest.mark.parametrize("mode,kw", [("LSTM", {}), ("GRU", {})])
@pytest.mark.parametrize("packed", [False, True])
def test_cuda_tensors_match_torch_nn(mode, kw, packed):
    """On a GPU: CUDA tensors through the CUDA kernels (the kernel weight layout, torch's gate
    order, lengths from a PackedSequence, both directions) against torch.nn's cuDNN, float64."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    dev = torch.device("cuda")
    ref, ours = _pair(mode, kw, 6, 8, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    ref, ours = ref.to(dev), ours.to(dev)
    assert ours.weight_ih_l0.stride() == (1, ours.weight_ih_l0.shape[0])  # .to() kept the layout
    x = torch.randn(5, 7, 6, dtype=torch.float64, device=dev)
    lengths = torch.tensor([7, 2, 5, 1, 6])
    outs = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        inp = (torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, batch_first=True, enforce_sorted=False)
               if packed else xi)
        out, _ = m(inp)
        y = out.data if packed else out
        y.square().sum().backward()
        outs.append([y.detach(), xi.grad] + [p.grad for p in m.parameters()])
    for k, (a, b) in enumerate(zip(*outs)):
        np.testing.assert_allclose(b.cpu().numpy(), a.cpu().numpy(), rtol=1e-7, atol=1e-9, err_msg=f"tensor {k}")
