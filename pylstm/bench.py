"""Times pylstm's fused LSTM (or GRU, --cell gru; vanilla RNN, --cell rnn; or the peephole LSTM
against the plain one, --cell peephole) against the NumPy reference (the book's
algorithm) and PyTorch's CPU nn.LSTM / nn.GRU / nn.RNN (oneDNN), side by side in one run, after checking
every candidate against the float64 reference. Run: pylstm bench, or python -m pylstm.bench
[--cell lstm|gru|peephole|rnn] [--shapes N,T,D,H ...] [--json out.json]

Every candidate is timed in three regimes, each fair to every library:
  loop  the same call repeated back to back, timed once it has settled (a training loop's
        steady state);
  warm  after 0.2 s idle, one untimed call, then the timed one (evaluation between epochs, a
        server that has just answered);
  cold  after 0.2 s idle, the timed call with nothing primed (a notebook, a first request).
Rows: median ms of the training step (forward + backward; in the loop regime also forward and
backward apart, and the min) and of forward-only inference in each regime; GFLOP/s of the
training step in the loop regime (6*G*N*T*H*(D+H) with G gate blocks: 24*N*T*H*(D+H) for the
LSTM); speedups of pylstm against each other candidate, per regime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

import pylstm
from pylstm import convert
from pylstm import reference as ref

DEFAULT_SHAPES = [(20, 35, 650, 650), (64, 100, 256, 256), (1, 200, 128, 128), (32, 35, 1024, 1024),
                  (8, 35, 64, 128), (20, 20, 200, 200), (7, 13, 300, 100), (1, 1, 650, 650)]
REGIMES = ("loop", "warm", "cold")
IDLE = 0.2  # seconds of idle before a warm or cold call


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sgemm_ceiling(n=2048, reps=5) -> float:
    """numpy float32 matmul n^3 GFLOP/s (best of reps), the machine's BLAS ceiling."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timeit(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


GATES = {"lstm": 4, "peephole": 4, "gru": 3, "rnn": 1}


def make_inputs(shape, dtype, seed=0, cell="lstm"):
    N, T, D, H = shape
    G = GATES[cell]
    rng = np.random.default_rng(seed)
    return {
        "xs": rng.standard_normal((N, T, D)).astype(dtype),
        "Wx": (rng.standard_normal((D, G * H)) / np.sqrt(D)).astype(dtype),
        "Wh": (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype),
        "b": (rng.standard_normal(G * H) * 0.1).astype(dtype),
        "h0": (rng.standard_normal((N, H)) * 0.5).astype(dtype),
        "c0": (rng.standard_normal((N, H)) * 0.5).astype(dtype),
        "dhs": rng.standard_normal((N, T, H)).astype(dtype),
        "P": (rng.standard_normal((3, H)) * 0.5).astype(dtype),
        "b_hn": (rng.standard_normal(H) * 0.1).astype(dtype),
    }


class PylstmCand:
    """pylstm's functional API on one backend."""

    def __init__(self, d, backend, precision="fp32"):
        self.d, self.backend, self.precision = d, backend, precision
        self.name = f"pylstm-{backend}" + ("" if precision == "fp32" else f"-{precision}")

    def forward(self):
        d = self.d
        self.out = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend=self.backend,
                                       precision=self.precision)

    def backward(self):
        self.grads = pylstm.lstm_backward(self.d["dhs"], self.out[3])

    def inference(self):
        d = self.d
        return pylstm.lstm_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend=self.backend,
                                     precision=self.precision)

    def results(self):
        return {"hs": self.out[0], "dxs": self.grads[0], "dWx": self.grads[3], "dWh": self.grads[4],
                "db": self.grads[5], "dh0": self.grads[1]}


class PylstmPeepholeCand(PylstmCand):
    """pylstm's peephole LSTM on one backend."""

    def forward(self):
        d = self.d
        self.out = pylstm.peephole_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["P"], d["h0"], d["c0"],
                                           backend=self.backend,
                                               precision=self.precision)

    def backward(self):
        self.grads = pylstm.peephole_backward(self.d["dhs"], self.out[3])

    def inference(self):
        d = self.d
        return pylstm.peephole_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["P"], d["h0"], d["c0"],
                                         backend=self.backend,
                                             precision=self.precision)


class PylstmGruCand(PylstmCand):
    """pylstm's GRU (reset-after, PyTorch's) on one backend."""

    def forward(self):
        d = self.d
        self.out = pylstm.gru_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["b_hn"], d["h0"], backend=self.backend,
                                      precision=self.precision)

    def backward(self):
        self.grads = pylstm.gru_backward(self.d["dhs"], self.out[2])

    def inference(self):
        d = self.d
        return pylstm.gru_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["b_hn"], d["h0"], backend=self.backend,
                                    precision=self.precision)

    def results(self):
        return {"hs": self.out[0], "dxs": self.grads[0], "dWx": self.grads[2], "dWh": self.grads[3],
                "db": self.grads[4], "dh0": self.grads[1]}


class PylstmRnnCand(PylstmCand):
    """pylstm's vanilla RNN (tanh) on one backend."""

    def forward(self):
        d = self.d
        self.out = pylstm.rnn_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], backend=self.backend,
                                      precision=self.precision)

    def backward(self):
        self.grads = pylstm.rnn_backward(self.d["dhs"], self.out[2])

    def inference(self):
        d = self.d
        return pylstm.rnn_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], backend=self.backend,
                                    precision=self.precision)

    def results(self):
        return {"hs": self.out[0], "dxs": self.grads[0], "dWx": self.grads[2], "dWh": self.grads[3],
                "db": self.grads[4], "dh0": self.grads[1]}


class TorchCand:
    """torch.nn.LSTM (or nn.RNN, tanh) with batch_first and the same weights, computing the same
    gradients (inputs, initial states, weights, biases)."""

    def __init__(self, d, torch, cell="lstm"):
        self.torch, self.name, self.lstm, self.cell = torch, "torch", cell == "lstm", cell
        N, T, D = d["xs"].shape
        H = d["Wh"].shape[0]
        module, to_torch, params = {
            "lstm": (torch.nn.LSTM, convert.to_torch, ("Wx", "Wh", "b")),
            "gru": (torch.nn.GRU, convert.gru_to_torch, ("Wx", "Wh", "b", "b_hn")),
            "rnn": (torch.nn.RNN, convert.rnn_to_torch, ("Wx", "Wh", "b")),
        }[cell]
        self.rnn = module(D, H, batch_first=True)
        with torch.no_grad():
            for n, v in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                            to_torch(*(d[k] for k in params))):
                getattr(self.rnn, n).copy_(torch.from_numpy(v))
        self.x = torch.from_numpy(d["xs"]).requires_grad_()
        self.h0 = torch.from_numpy(d["h0"])[None].requires_grad_()
        self.c0 = torch.from_numpy(d["c0"])[None].requires_grad_() if self.lstm else None
        self.state = (self.h0, self.c0) if self.lstm else self.h0
        self.dhs = torch.from_numpy(d["dhs"])

    def forward(self):
        self.out = self.rnn(self.x, self.state)[0]

    def backward(self):
        for p in (self.x, self.h0, self.c0, *self.rnn.parameters()):
            if p is not None:
                p.grad = None
        self.out.backward(self.dhs)

    def inference(self):
        with self.torch.no_grad():
            return self.rnn(self.x, self.state)

    def results(self):
        w = [getattr(self.rnn, n).grad.numpy() for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0")]
        if self.cell == "gru":  # b's gradient is bias_ih's (bias_hh's z, r parts are equal to it)
            dWx, dWh, db, _ = convert.gru_from_torch(w[0], w[1], w[2])
        else:
            dWx, dWh, db = (convert.from_torch if self.lstm else convert.rnn_from_torch)(w[0], w[1], w[2])
        return {"hs": self.out.detach().numpy(), "dxs": self.x.grad.numpy(), "dWx": dWx, "dWh": dWh,
                "db": db, "dh0": self.h0.grad[0].numpy()}


def _rel(got, want) -> float:
    """max |got - want| / max |want|, in float64."""
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def check(cand, want, tol):
    cand.forward()
    cand.backward()
    got = cand.results()
    for k, w in want.items():
        err = np.abs(got[k].astype(np.float64) - w).max() / max(np.abs(w).max(), 1e-30)
        if not err <= tol:
            raise SystemExit(f"refusing to time {cand.name}: {k} differs from the reference by {err:.2e} "
                             f"(tolerance {tol:.0e})")


def bench_shape(shape, dtype, repeats, with_torch, with_numpy, settle=0.2, cell="lstm", bf16=False):
    d = make_inputs(shape, dtype, cell=cell)
    d64 = {k: v.astype(np.float64) for k, v in d.items()}
    args64 = (d64["xs"], d64["h0"], d64["c0"], d64["Wx"], d64["Wh"], d64["b"])
    if cell == "lstm":
        hs, _, _, rc = ref.lstm_forward_ref(*args64)
        dxs, dh0, _, dWx, dWh, db = ref.lstm_backward_ref(d64["dhs"], rc)
        ours = PylstmCand
    elif cell == "gru":
        hs, _, rc = ref.gru_forward_ref(d64["xs"], d64["h0"], d64["Wx"], d64["Wh"], d64["b"], d64["b_hn"])
        dxs, dh0, dWx, dWh, db, _ = ref.gru_backward_ref(d64["dhs"], rc)
        ours = PylstmGruCand
    elif cell == "peephole":
        hs, _, _, rc = ref.peephole_forward_ref(*args64, d64["P"])
        dxs, dh0, _, dWx, dWh, db, _ = ref.peephole_backward_ref(d64["dhs"], rc)
        ours = PylstmPeepholeCand
    else:
        hs, _, rc = ref.rnn_forward_ref(d64["xs"], d64["h0"], d64["Wx"], d64["Wh"], d64["b"])
        dxs, dh0, dWx, dWh, db = ref.rnn_backward_ref(d64["dhs"], rc)
        ours = PylstmRnnCand
    want = {"hs": hs, "dxs": dxs, "dWx": dWx, "dWh": dWh, "db": db, "dh0": dh0}
    tol = 1e-3 if dtype == np.float32 else 1e-9

    cands = [ours(d, "cpu")]
    accuracy = None
    if bf16:
        # checked against the reference's bfloat16 specification (float64 sums of the rounded
        # operands' products): closer to it than it is to the float32 specification, per tensor;
        # its error against the float64 reference is reported
        cand = ours(d, "cpu", "bf16")
        cand.forward()
        cand.backward()
        got = cand.results()
        with ref.bf16_gemms():
            spec = ours(d64, "numpy")
            spec.forward()
            spec.backward()
            spec = spec.results()
        accuracy = {}
        for k, w in want.items():
            err_spec = _rel(got[k], spec[k])
            gap = _rel(spec[k], w)
            if not err_spec <= 0.75 * gap + 1e-6:
                raise SystemExit(f"refusing to time {cand.name}: {k} is {err_spec:.2e} from the bfloat16 "
                                 f"specification, which is {gap:.2e} from float32's")
            accuracy[k] = _rel(got[k], w)
    if with_numpy:
        cands.append(ours(d, "numpy"))
    if with_torch is not None and cell != "peephole":
        cands.append(TorchCand(d, with_torch, cell))
    for c in cands:
        check(c, want, tol)
    if bf16:
        cands.append(cand)
    if cell == "peephole":
        # no library has a fused peephole LSTM to compare with: pylstm's plain LSTM is the
        # baseline (checked against its own reference)
        hs, _, _, rc = ref.lstm_forward_ref(*args64)
        dxs, dh0, _, dWx, dWh, db = ref.lstm_backward_ref(d64["dhs"], rc)
        plain = PylstmCand(d, "cpu")
        plain.name = "pylstm-cpu-lstm"
        check(plain, {"hs": hs, "dxs": dxs, "dWx": dWx, "dWh": dWh, "db": db, "dh0": dh0}, tol)
        cands.append(plain)

    times = {c.name: {r: {"train": [], "infer": []} for r in REGIMES} for c in cands}
    for c in cands:
        times[c.name]["loop"].update(fwd=[], bwd=[])
    for r in range(repeats + 1):  # round 0 warms up
        for c in cands:
            numpy_ref = c.name == "pylstm-numpy"
            if numpy_ref and r > min(repeats, 3):
                continue  # the reference is slow; 3 timed rounds are plenty
            sample = time_round(c, loop_only=numpy_ref, settle=settle)
            if r:
                for regime, kinds in sample.items():
                    for k, v in kinds.items():
                        times[c.name][regime][k].append(v)
    N, T, D, H = shape
    flops = 6 * GATES[cell] * N * T * H * (D + H)
    row = {"shape": list(shape), "cell": cell, "flops_train": flops, "candidates": {}}
    row["speedup"] = {}
    if accuracy is not None:
        row["bf16_error_vs_float64_reference"] = accuracy
    for name, t in times.items():
        row["candidates"][name] = {
            regime: {k: {"median_ms": 1e3 * float(np.median(v)), "min_ms": 1e3 * float(np.min(v))}
                     for k, v in kinds.items() if v}
            for regime, kinds in t.items()}
        row["candidates"][name]["gflops_train"] = flops / float(np.median(t["loop"]["train"])) / 1e9
    return row


def time_round(c, loop_only=False, settle=IDLE, loop_calls=3):
    """One timed sample of candidate c per regime (see the module docstring), in seconds:
    {"loop": {fwd, bwd, train, infer}, "warm": {train, infer}, "cold": {train, infer}}."""
    def step():
        c.forward()
        c.backward()

    # Loop: the previous candidate's thread pools (OpenMP, OpenBLAS) go idle first (a pool
    # still spinning on these cores would slow whoever runs next), then back-to-back calls;
    # the last one is timed, forward and backward apart.
    time.sleep(settle)
    for _ in range(loop_calls):
        step()
    tf = _timeit(c.forward)
    tb = _timeit(c.backward)
    for _ in range(loop_calls):
        c.inference()
    out = {"loop": {"fwd": tf, "bwd": tb, "train": tf + tb, "infer": _timeit(c.inference)}}
    if loop_only:
        return out
    for regime in ("warm", "cold"):
        out[regime] = {}
        for kind, fn in (("train", step), ("infer", c.inference)):
            time.sleep(IDLE)
            if regime == "warm":
                fn()
            out[regime][kind] = _timeit(fn)
    return out


def _shape(text: str) -> tuple:
    """An N,T,D,H argument: four integers >= 1."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N,T,D,H (four integers)") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be N,T,D,H: four integers >= 1")
    return shape


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def main(argv=None, prog=None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The default grid takes a few minutes on 2 cores with torch installed "
                                       "(--repeats and --no-numpy shorten it).")
    p.add_argument("--cell", choices=sorted(GATES), default="lstm",
                   help="lstm, gru, peephole (timed beside the plain LSTM) or rnn (tanh); default lstm")
    p.add_argument("--shapes", nargs="+", type=_shape, metavar="N,T,D,H",
                   help="shapes to time (default: " + " ".join(",".join(map(str, s)) for s in DEFAULT_SHAPES) + ")")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default float32")
    p.add_argument("--threads", type=_positive, default=None, help="threads for pylstm and torch (default: pylstm's)")
    p.add_argument("--repeats", type=_positive, default=10, help="timed rounds per candidate (default 10)")
    p.add_argument("--no-torch", action="store_true", help="leave torch out")
    p.add_argument("--no-numpy", action="store_true", help="leave the NumPy reference out (the slowest candidate)")
    p.add_argument("--bf16", action="store_true",
                   help="also time pylstm with precision='bf16' (bfloat16 GEMM operands; CPUs with AVX512-BF16)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)

    shapes = a.shapes or DEFAULT_SHAPES
    dtype = np.dtype(a.dtype).type
    if a.threads:
        pylstm.set_num_threads(a.threads)
    threads = pylstm.get_num_threads()
    torch = None
    if not a.no_torch:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            torch = None
    ceiling = sgemm_ceiling()
    from pylstm import _backend
    corename = _backend.cpu.blas_info()[1] if _backend.cpu else "-"
    header = {
        "pylstm": pylstm.__version__, "commit": git_commit(), "cpu": cpu_name(), "threads": threads,
        "cell": a.cell, "dtype": a.dtype, "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__ if torch else None, "openblas_core": corename,
        "sgemm_2048_gflops": ceiling, "date": time.strftime("%Y-%m-%d"),
    }
    print(f"# pylstm {header['pylstm']} ({header['commit']}) | {a.cell} | {header['cpu']} | {threads} threads | "
          f"{a.dtype} | numpy {np.__version__} sgemm 2048^3: {ceiling:.0f} GFLOP/s | OpenBLAS core "
          f"{corename} | torch {header['torch'] or 'not installed'} | {header['date']}")
    cols = ("| N,T,D,H | candidate | loop fwd ms | loop bwd ms | loop train ms (min) | loop infer ms | "
            "warm train ms | warm infer ms | cold train ms | cold infer ms | train GFLOP/s | % ceiling |")
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    rows = []

    def med(c, regime, kind):
        return c[regime][kind]["median_ms"] if kind in c.get(regime, {}) else float("nan")

    def fmt(v, spec=".2f", suffix=""):
        return "-" if v != v else f"{v:{spec}}{suffix}"  # (NaN: a regime the candidate skips)

    def ratios(mine, other):
        return {f"{regime} {kind}": med(other, regime, kind) / med(mine, regime, kind)
                for regime in REGIMES for kind in ("train", "infer")}

    for shape in shapes:
        row = bench_shape(shape, dtype, a.repeats, torch, not a.no_numpy, cell=a.cell, bf16=a.bf16)
        rows.append(row)
        ours = row["candidates"]["pylstm-cpu"]
        for name, c in row["candidates"].items():
            cells = " | ".join(fmt(med(c, r, k)) for r in ("warm", "cold") for k in ("train", "infer"))
            print(f"| {','.join(map(str, shape))} | {name} | {med(c, 'loop', 'fwd'):.2f} | "
                  f"{med(c, 'loop', 'bwd'):.2f} | {med(c, 'loop', 'train'):.2f} "
                  f"({c['loop']['train']['min_ms']:.2f}) | {med(c, 'loop', 'infer'):.2f} | {cells} | "
                  f"{c['gflops_train']:.1f} | {100 * c['gflops_train'] / ceiling:.0f}% |")

        def speedup_row(label, mine, other, row=row):
            r = ratios(mine, other)
            row["speedup"][label] = r
            cells = " | ".join(fmt(r[f"{g} {k}"], ".2f", "x") for g in ("warm", "cold") for k in ("train", "infer"))
            print(f"|   | {label} | | | **{r['loop train']:.2f}x** | **{r['loop infer']:.2f}x** | {cells} | | |")

        for name, c in row["candidates"].items():
            if name in ("pylstm-cpu", "pylstm-cpu-bf16"):
                continue
            speedup_row(f"pylstm-cpu vs {name}", ours, c)
        if "pylstm-cpu-bf16" in row["candidates"]:
            b = row["candidates"]["pylstm-cpu-bf16"]
            for other in ("pylstm-cpu", "torch"):
                if other in row["candidates"]:
                    speedup_row(f"pylstm-cpu-bf16 vs {other}", b, row["candidates"][other])
        if "bf16_error_vs_float64_reference" in row:
            errs = ", ".join(f"{k} {v:.1e}" for k, v in row["bf16_error_vs_float64_reference"].items())
            print(f"|   | bf16 error vs the float64 reference | {errs} | | | | | | | | | |")
        sys.stdout.flush()
    if _backend.cpu is not None:
        st = _backend.cpu._pool_stats()
        header["pool"] = st
        print(f"# pylstm's thread pool: wake-up latency {st['wake_latency_us']:.0f} us (a running average over "
              f"{st['parked_wakes']} wake-ups), {st['moved_off_caller_cpu']} workers moved off the caller's CPU")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
