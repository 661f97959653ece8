"""GPU benchmark: pylstm's CUDA kernels against torch.nn.LSTM on cuDNN (strict fp32,
TF32 off), in one run, plus global-norm clipping bandwidth.

    python benchmarks/bench_cuda.py [--repeats 20] [--json out.json]

Needs a GPU, CuPy and a CUDA build of PyTorch. Every candidate is first checked against the
NumPy reference (float32, within twice the naive float32 error); then forward-only and training step (forward +
backward) are timed with CUDA events on the standard grid and at N = 1, 4, 8, without
and with CUDA graphs (pylstm.set_cuda_graphs). Written without a GPU: not yet run on one.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

GRID = [(20, 35, 650, 650), (64, 100, 256, 256), (1, 200, 128, 128), (32, 35, 1024, 1024),
        (1, 35, 650, 650), (4, 35, 650, 650), (8, 35, 650, 650)]


def _time(fn, repeats, cupy):
    """Median milliseconds of fn() over `repeats` runs, timed with CUDA events."""
    for _ in range(3):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--clip-elements", type=int, default=50_000_000)
    ap.add_argument("--review", action="store_true",
                    help="also the checks of the CUDA review's fixes (graphs in a 3-layer loop, > 2^31 elements)")
    a = ap.parse_args(argv)

    import cupy
    import torch

    import pylstm
    from pylstm import convert
    from pylstm import reference as ref

    if "cuda" not in pylstm.available_backends():
        sys.exit(f"no CUDA backend: {pylstm.cuda_status()[1]}")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    # torch and CuPy on one stream: CuPy's current stream is the legacy default stream, and so
    # is torch's unless told otherwise.
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device: {name}; torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
          f"cupy {cupy.__version__}")
    rows = []
    for (N, T, D, H) in GRID:
        rng = np.random.default_rng(0)
        xs = rng.standard_normal((N, T, D)).astype(np.float32)
        Wx = (rng.standard_normal((D, 4 * H)) / np.sqrt(D)).astype(np.float32)
        Wh = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32)
        b = (rng.standard_normal(4 * H) * 0.1).astype(np.float32)
        dhs = rng.standard_normal((N, T, H)).astype(np.float32)
        g = {k: cupy.asarray(v) for k, v in dict(xs=xs, Wx=Wx, Wh=Wh, b=b, dhs=dhs).items()}

        # correctness first (hs and dWh against the float64 reference)
        hs, _, _, cache = pylstm.lstm_forward(g["xs"], g["Wx"], g["Wh"], g["b"])
        grads = pylstm.lstm_backward(g["dhs"], cache)
        want = ref.lstm_forward_ref(xs.astype(np.float64), None, None, Wx.astype(np.float64),
                                    Wh.astype(np.float64), b.astype(np.float64))
        err = float(np.abs(cupy.asnumpy(hs) - want[0]).max() / np.abs(want[0]).max())
        wb = ref.lstm_backward_ref(dhs.astype(np.float64), want[3])
        err_dwh = float(np.abs(cupy.asnumpy(grads[4]) - wb[4]).max() / np.abs(wb[4]).max())
        assert err < 1e-4 and err_dwh < 1e-4, f"{(N, T, D, H)}: pylstm cuda error {err:.2e} / {err_dwh:.2e}"

        def ours_fwd():
            pylstm.lstm_inference(g["xs"], g["Wx"], g["Wh"], g["b"])

        def ours_train():
            _, _, _, c = pylstm.lstm_forward(g["xs"], g["Wx"], g["Wh"], g["b"])
            pylstm.lstm_backward(g["dhs"], c)

        lstm = torch.nn.LSTM(D, H, batch_first=True).to(dev)
        w_ih, w_hh, b_ih, b_hh = convert.to_torch(Wx, Wh, b)
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(torch.from_numpy(w_ih))
            lstm.weight_hh_l0.copy_(torch.from_numpy(w_hh))
            lstm.bias_ih_l0.copy_(torch.from_numpy(b_ih))
            lstm.bias_hh_l0.copy_(torch.from_numpy(b_hh))
        tx = torch.from_numpy(xs).to(dev).requires_grad_(True)
        tdh = torch.from_numpy(dhs).to(dev)
        out = lstm(tx)[0]
        terr = float((out.detach().cpu().numpy() - want[0]).__abs__().max() / np.abs(want[0]).max())

        def torch_fwd():
            with torch.no_grad():
                lstm(tx)

        def torch_train():
            lstm.zero_grad(set_to_none=True)
            o = lstm(tx)[0]
            o.backward(tdh)

        r = {"shape": [N, T, D, H], "err_hs": err, "err_dWh": err_dwh, "torch_err_hs": terr,
             "fwd_ms": _time(ours_fwd, a.repeats, cupy), "train_ms": _time(ours_train, a.repeats, cupy),
             "torch_fwd_ms": _time(torch_fwd, a.repeats, cupy),
             "torch_train_ms": _time(torch_train, a.repeats, cupy)}
        # The same calls as CUDA graphs (pylstm.set_cuda_graphs): CuPy's pool hands the same
        # blocks back each call, so after the first call every call should be a replay.
        pylstm.set_cuda_graphs(True)
        pylstm._backend.cuda._clear_graphs()
        hs_g = cupy.asnumpy(pylstm.lstm_inference(g["xs"], g["Wx"], g["Wh"], g["b"])[0])
        assert np.array_equal(hs_g, cupy.asnumpy(pylstm.lstm_inference(g["xs"], g["Wx"], g["Wh"], g["b"])[0]))
        r["fwd_graph_ms"] = _time(ours_fwd, a.repeats, cupy)
        r["train_graph_ms"] = _time(ours_train, a.repeats, cupy)
        r["graph_replays"], r["graph_captures"], r["graph_updates"] = pylstm._backend.cuda._graph_stats()
        pylstm.set_cuda_graphs(False)
        pylstm._backend.cuda._clear_graphs()
        flops = 24 * N * T * H * (D + H)
        r["train_tflops"] = flops / r["train_ms"] / 1e9
        r["train_speedup"] = r["torch_train_ms"] / r["train_ms"]
        r["fwd_speedup"] = r["torch_fwd_ms"] / r["fwd_ms"]
        rows.append(r)
        print(f"{str((N, T, D, H)):>22}  train {r['train_ms']:8.3f} ms ({r['train_tflops']:6.2f} TFLOP/s)"
              f"  cuDNN {r['torch_train_ms']:8.3f} ms  x{r['train_speedup']:.2f}  |  fwd {r['fwd_ms']:7.3f}"
              f"  cuDNN {r['torch_fwd_ms']:7.3f}  x{r['fwd_speedup']:.2f}  | err {err:.1e}")
        print(f"{'':>22}  with CUDA graphs: train {r['train_graph_ms']:8.3f} ms "
              f"(x{r['train_ms'] / r['train_graph_ms']:.2f} over no graphs), fwd {r['fwd_graph_ms']:7.3f} ms "
              f"(x{r['fwd_ms'] / r['fwd_graph_ms']:.2f}); replays {r['graph_replays']}, "
              f"captures {r['graph_captures']}, updates {r['graph_updates']}")

    # clipping: 50M float32 elements in one array, in 100, and one large array among 300 and
    # 3000 small ones (the chunk plan must not starve it); bytes = read (norm) + read and write
    # (scale)
    peak = 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 / 1e9  # GB/s
    clip = []
    layouts = {"1 array": (1, 0), "100 equal arrays": (100, 0), "1 + 300 small": (1, 300), "1 + 3000 small": (1, 3000)}
    for n_big, n_small in layouts.values():
        per = (a.clip_elements - 1000 * n_small) // n_big
        arrays = [cupy.random.standard_normal(per, dtype=cupy.float32) for _ in range(n_big)]
        arrays += [cupy.random.standard_normal(1000, dtype=cupy.float32) for _ in range(n_small)]
        total = sum(int(x.size) for x in arrays)
        ms = _time(lambda: pylstm.clip_grads(arrays, 1e30, error_if_nonfinite=False), a.repeats, cupy)
        ms_scale = _time(lambda: pylstm.clip_grads(arrays, 1e-3, error_if_nonfinite=False), a.repeats, cupy)
        row = {"arrays": len(arrays), "elements": total, "norm_ms": ms, "clip_ms": ms_scale,
               "norm_GBs": total * 4 / ms / 1e6, "clip_GBs": total * 12 / ms_scale / 1e6}
        clip.append(row)
        print(f"clip {total / 1e6:.0f}M float32 in {len(arrays)} arrays: norm only {ms:.3f} ms = "
              f"{row['norm_GBs']:.0f} GB/s; norm + scale {ms_scale:.3f} ms = {row['clip_GBs']:.0f} GB/s; "
              f"theoretical peak {peak:.0f} GB/s ({100 * row['clip_GBs'] / peak:.0f}%)")
    review = review_checks(cupy, pylstm) if a.review else None
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "rows": rows, "clip": clip, "peak_GBs": peak, "review": review}, f, indent=1)


def review_checks(cupy, pylstm):
    """What a first GPU run must confirm of the CUDA review's fixes: graph replays in a 3-layer
    training loop, and a shape with more than 2^31 elements of saved gates."""
    from pylstm.models import LstmLM
    from pylstm.optimizers import SGD
    from pylstm.trainer import RnnlmTrainer

    out = {}
    # a 3-layer model trained 20 steps with graphs on: captures stop early, later steps replay
    rng = np.random.default_rng(0)
    corpus = (np.cumsum(rng.integers(1, 4, 20000)) % 200).astype(np.int64)
    model = LstmLM(200, 64, 64, num_layers=3, seed=0).to("cuda")
    pylstm.set_cuda_graphs(True)
    pylstm._backend.cuda._clear_graphs()
    RnnlmTrainer(model, SGD(1.0), log=lambda m: None).fit(corpus[:-1], corpus[1:], max_epoch=1, batch_size=8,
                                                          time_size=16, max_grad=1.0, eval_interval=None,
                                                          progress=False, max_steps=20)
    replays, captures, updates = pylstm._backend.cuda._graph_stats()
    pylstm.set_cuda_graphs(False)
    out["graphs_3_layers_20_steps"] = {"replays": replays, "captures": captures, "updates": updates}
    print(f"3-layer training loop, 20 steps with graphs: replays {replays}, captures {captures}, "
          f"updates {updates} (of {20 * 6} calls)")
    # past 2^31 elements: N*T*4H = 1024*512*4096 gates; rows 0-1 must equal a separate N = 2 call
    N, T, D, H = 1024, 512, 64, 1024
    xs = cupy.random.standard_normal((N, T, D), dtype=cupy.float32)
    Wx = cupy.random.standard_normal((D, 4 * H), dtype=cupy.float32) / 8
    Wh = cupy.random.standard_normal((H, 4 * H), dtype=cupy.float32) / 32
    b = cupy.zeros(4 * H, cupy.float32)
    hs, hT, cT, cache = pylstm.lstm_forward(xs, Wx, Wh, b)
    dxs = pylstm.lstm_backward(hs * 0 + 1, cache)[0]
    hs2, _, _, cache2 = pylstm.lstm_forward(xs[:2].copy(), Wx, Wh, b)
    dxs2 = pylstm.lstm_backward(hs2 * 0 + 1, cache2)[0]
    err = float(cupy.abs(hs[:2] - hs2).max())
    err_d = float(cupy.abs(dxs[:2] - dxs2).max() / cupy.abs(dxs2).max())
    out["past_2_31"] = {"shape": [N, T, D, H], "gates_elements": N * T * 4 * H, "hs_err": err, "dxs_rel_err": err_d}
    print(f"(N, T, D, H) = {(N, T, D, H)}: {N * T * 4 * H / 2**31:.2f} x 2^31 gate elements; rows 0-1 against "
          f"an N = 2 call: hs max diff {err:.1e}, dxs rel {err_d:.1e}")
    del hs, hT, cT, cache, dxs
    return out


if __name__ == "__main__":
    main()
