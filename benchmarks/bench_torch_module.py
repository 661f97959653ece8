"""A PyTorch training loop with torch.nn.LSTM / GRU against the same loop with pylstm.torch's
module: embedding, a 2-layer recurrent layer, linear, cross-entropy, Adam, on the CPU; steps per
second, alternating the two candidates, medians over rounds. Also the module's own overhead:
the autograd Function and the layout conversion against the bare kernels (pylstm.lstm_forward /
backward) on the same layer. With --variable-length, every batch's sequences get lengths drawn
uniformly from [T/4, T] and both modules take them as one PackedSequence (PyTorch's packed path
against pylstm's per-sequence lengths).

Run: python benchmarks/bench_torch_module.py [--cell lstm|gru] [--shape N,T,D,H] [--threads 2]
     [--variable-length]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import pylstm
import pylstm.torch as pt
from pylstm.bench import cpu_name, git_commit


def make(cls, V, D, H, seed):
    torch.manual_seed(seed)
    emb, lin = torch.nn.Embedding(V, D), torch.nn.Linear(H, V)
    rnn = cls(D, H, num_layers=2, batch_first=True)
    params = list(emb.parameters()) + list(rnn.parameters()) + list(lin.parameters())
    return emb, rnn, lin, torch.optim.Adam(params, lr=1e-3)


def step(model, batch, V, lengths=None):
    emb, rnn, lin, opt = model
    if lengths is None:
        out, _ = rnn(emb(batch[:, :-1]))
        loss = torch.nn.functional.cross_entropy(lin(out).reshape(-1, V), batch[:, 1:].reshape(-1))
    else:  # packed: the loss over the valid positions only
        pack = torch.nn.utils.rnn.pack_padded_sequence
        out, _ = rnn(pack(emb(batch[:, :-1]), lengths, batch_first=True, enforce_sorted=False))
        targets = pack(batch[:, 1:], lengths, batch_first=True, enforce_sorted=False).data
        loss = torch.nn.functional.cross_entropy(lin(out.data), targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--shape", default="20,35,650,650", help="N,T,D,H of each recurrent layer (default 20,35,650,650)")
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round and candidate")
    p.add_argument("--variable-length", action="store_true",
                   help="lengths uniform in [T/4, T] per sequence, as PackedSequences")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    N, T, D, H = (int(v) for v in a.shape.split(","))
    V = a.vocab
    torch.set_num_threads(a.threads)
    pylstm.set_num_threads(a.threads)
    name = a.cell.upper()
    cands = {f"torch.nn.{name}": make(getattr(torch.nn, name), V, D, H, 0),
             f"pylstm.torch.{name}": make(getattr(pt, name), V, D, H, 0)}
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, V, (a.steps, N, T + 1), generator=gen)
    lens = [torch.randint(max(1, T // 4), T + 1, (N,), generator=gen) if a.variable_length else None
            for _ in range(a.steps)]
    times = {k: [] for k in cands}
    for r in range(a.rounds + 1):
        for k, model in cands.items():
            step(model, data[0], V, lens[0])  # untimed: the loop's steady state
            t0 = time.perf_counter()
            for b, ln in zip(data, lens):
                step(model, b, V, ln)
            if r:
                times[k].append((time.perf_counter() - t0) / a.steps)
    # The recurrent stack alone (the two modules' 2 layers, forward + backward of the sum of the
    # outputs), alternating, on the same inputs: what the loop's other work dilutes.
    stack = {k: [] for k in cands}
    xin = torch.randn(N, T, D, requires_grad=True)
    for r in range(a.rounds * 2 + 1):
        for k, model in cands.items():
            rnn = model[1]
            ln = lens[r % len(lens)]
            t0 = time.perf_counter()
            if ln is None:
                out, _ = rnn(xin)
                out.sum().backward()
            else:
                pk = torch.nn.utils.rnn.pack_padded_sequence(xin, ln, batch_first=True, enforce_sorted=False)
                out, _ = rnn(pk)
                out.data.sum().backward()
            if r:
                stack[k].append(time.perf_counter() - t0)
    stack_ms = {k: 1e3 * float(np.median(v)) for k, v in stack.items()}
    # The module's overhead over the bare kernels, one layer, forward + backward, as in a training
    # loop: the parameters are updated in place (untimed) before each timed call of either, so
    # any per-update work of the module is in its time and both start after a torch op.
    layer = getattr(pt, name)(D, H, batch_first=True)
    x = torch.randn(N, T, D, requires_grad=True)
    over = {"module": [], "kernels": []}
    Wx, Wh, b, extra = (t.detach().numpy() if t is not None else None for t in layer._kernel_params(0))
    xs, dhs = x.detach().numpy(), np.ones((N, T, H), np.float32)

    def update():
        with torch.no_grad():
            for prm in layer.parameters():
                prm.mul_(1.0)  # bumps the version, as an optimizer step does

    for r in range(a.rounds * 4 + 1):
        update()
        t0 = time.perf_counter()
        out, _ = layer(x)
        out.backward(torch.ones_like(out))
        t1 = time.perf_counter()
        x.grad = None
        layer.zero_grad(set_to_none=True)
        update()
        t2 = time.perf_counter()
        if a.cell == "lstm":  # the same computation: torch's gate order on the same arrays
            cache = pylstm.lstm_forward(xs, Wx, Wh, b, gate_order="torch")[3]
            pylstm.lstm_backward(dhs, cache)
        else:
            cache = pylstm.gru_forward(xs, Wx, Wh, b, extra, gate_order="torch")[2]
            pylstm.gru_backward(dhs, cache)
        t3 = time.perf_counter()
        if r:
            over["module"].append(t1 - t0)
            over["kernels"].append(t3 - t2)
    res = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    mod, ker = 1e3 * float(np.median(over["module"])), 1e3 * float(np.median(over["kernels"]))
    vl = ", lengths uniform in [T/4, T] (PackedSequence)" if a.variable_length else ""
    print(f"# {cpu_name()} | commit {git_commit()} | {a.threads} threads | torch {torch.__version__} | "
          f"{name} 2 layers, N,T,D,H = {a.shape}, V = {V}, Adam{vl}; "
          f"medians of {a.rounds} rounds x {a.steps} steps")
    for k, v in res.items():
        print(f"{k}: {v:.1f} ms/step ({1e3 / v:.2f} steps/s)")
    ours, theirs = res[f"pylstm.torch.{name}"], res[f"torch.nn.{name}"]
    print(f"speedup of the whole training step: {theirs / ours:.2f}x")
    s_ours, s_theirs = stack_ms[f"pylstm.torch.{name}"], stack_ms[f"torch.nn.{name}"]
    print(f"the 2-layer recurrent stack alone, forward+backward: torch.nn {s_theirs:.1f} ms, pylstm.torch "
          f"{s_ours:.1f} ms, speedup {s_theirs / s_ours:.2f}x")
    print(f"one layer forward+backward: module {mod:.2f} ms, bare kernels {ker:.2f} ms, overhead "
          f"{100 * (mod - ker) / ker:.1f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu_name(), "commit": git_commit(), "threads": a.threads, "cell": a.cell,
                       "shape": a.shape, "vocab": V, "variable_length": a.variable_length, "ms_per_step": res,
                       "module_ms": mod, "kernels_ms": ker, "stack_ms": stack_ms,
                       "date": time.strftime("%Y-%m-%d")}, f, indent=1)


if __name__ == "__main__":
    main()
