"""Times a language model's output layer, forward and backward: scores = x @ W + b over the
vocabulary, the softmax cross-entropy, then dx, dW and db. At a small hidden size it is most of a
training step (the book's Rnnlm: (700 x 100) @ (100 x 10000), three products of 1.4 GFLOP and a
softmax over 7 M scores for a recurrent layer of 0.2 GFLOP).

Candidates, side by side in one run, each checked against a float64 NumPy computation first:
  pylstm        pylstm.matmul (bias and db in the same calls) and softmax_cross_entropy, float32
  pylstm-bf16   the same with precision="bf16" (operands rounded to bfloat16; CPUs with AVX512-BF16)
  numpy         the book's code: x @ W + b, a NumPy softmax, dout @ W.T, x.T @ dout, dout.sum(0)
  torch         torch.nn.functional.linear + cross_entropy, loss.backward() (when torch is installed)

Rows: median ms of the forward + backward over --repeats, back to back (a training loop), and
each candidate's time relative to pylstm's float32. The host's CPU model and thread count are
printed with the table.

  python benchmarks/bench_output_layer.py [--threads 1] [--shapes M,D,V ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import pylstm
from pylstm.bench import cpu_name, git_commit

SHAPES = [(700, 100, 10000), (400, 200, 10000), (700, 650, 10000)]  # book, Zaremba small, 650


def _pylstm(precision):
    def make(x, W, b, t):
        out = {}

        def step():
            s = pylstm.matmul(x, W, bias=b, precision=precision)
            loss, d = pylstm.softmax_cross_entropy(s, t)
            dW, db = np.empty_like(W), np.empty_like(b)
            pylstm.matmul(x.T, d, out=dW, colsum=db, precision=precision)
            dx = pylstm.matmul(d, W.T, precision=precision)
            out.update(loss=loss, dx=dx, dW=dW, db=db)
        return step, out
    return make


def _numpy(x, W, b, t):
    out = {}

    def step():
        s = x @ W + b
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        p = e / e.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(len(t)), t] + 1e-7).mean()  # (the book's)
        p[np.arange(len(t)), t] -= 1
        d = p / len(t)
        out.update(loss=loss, dx=d @ W.T, dW=x.T @ d, db=d.sum(axis=0))
    return step, out


def _torch(x, W, b, t):
    import torch
    xt = torch.from_numpy(x).requires_grad_()
    Wt = torch.from_numpy(np.ascontiguousarray(W.T)).requires_grad_()  # (V, D): nn.Linear's layout
    bt = torch.from_numpy(b).requires_grad_()
    tt = torch.from_numpy(t.astype(np.int64))
    out = {}

    def step():
        for p in (xt, Wt, bt):
            p.grad = None
        loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(xt, Wt, bt), tt)
        loss.backward()
        out.update(loss=float(loss.detach()), dx=xt.grad.numpy(), dW=Wt.grad.numpy().T, db=bt.grad.numpy())
    return step, out


def _check(name, out, want, tol):
    for k in ("dx", "dW", "db"):
        err = np.max(np.abs(out[k] - want[k])) / np.max(np.abs(want[k]))
        if not err < tol:
            raise AssertionError(f"{name}: {k} is {err:.1e} from float64 (tolerance {tol:.0e})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes", nargs="+", default=None, help="M,D,V (rows = batch x time, input size, vocabulary)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in a.shapes] if a.shapes else SHAPES
    pylstm.set_num_threads(a.threads)
    cands = {"pylstm": _pylstm("fp32")}
    if pylstm._backend.cpu is not None and pylstm._backend.cpu._has_avx512_bf16():
        cands["pylstm-bf16"] = _pylstm("bf16")
    cands["numpy"] = _numpy
    try:
        import torch
        torch.set_num_threads(a.threads)
        cands["torch"] = _torch
    except ImportError:
        pass
    print(f"host: {cpu_name()}, commit {git_commit()}, {a.threads} thread(s) for pylstm and torch; "
          f"NumPy's BLAS: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"{'M, D, V':>16} " + " ".join(f"{c:>13}" for c in cands) + "   (ms; x: time / pylstm float32's)")
    results = []
    for M, D, V in shapes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((M, D)).astype(np.float32)
        W = (rng.standard_normal((D, V)) / np.sqrt(D)).astype(np.float32)
        b = (0.1 * rng.standard_normal(V)).astype(np.float32)
        t = rng.integers(0, V, M).astype(np.int32)
        want_step, want = _numpy(x.astype(np.float64), W.astype(np.float64), b.astype(np.float64), t)
        want_step()
        row = {"shape": [M, D, V], "ms": {}}
        for name, make in cands.items():
            step, out = make(x, W, b, t)
            step()
            _check(name, out, want, 5e-2 if name.endswith("bf16") else 1e-4)
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            row["ms"][name] = float(np.median(times) * 1e3)
        base = row["ms"]["pylstm"]
        cells = [f"{row['ms'][c]:7.2f} {row['ms'][c] / base:4.2f}x" for c in cands]
        print(f"{M:>6},{D:>4},{V:>6} " + " ".join(f"{c:>13}" for c in cells), flush=True)
        results.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"host": cpu_name(), "commit": git_commit(), "threads": a.threads, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
