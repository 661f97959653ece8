"""Data-parallel scaling on MPI: training steps per second of the PTB recipes with 1 rank and with
K ranks (one thread each by default), alternated in one run, and the overlap experiment.

    python benchmarks/bench_distributed.py --recipe book --ranks 2 --runs 3 [--data-dir DIR]

Variants, each a fresh `mpiexec -n K` job running the same global batch:
  1 rank       the step of RnnlmTrainer: forward, backward, clip, update
  K ranks      the same with each rank on batch/K rows and the gradients allreduced after backward
               (DataParallel.allreduce_grads), every rank clipping and updating everything
  K shared     RnnlmTrainer(comm=...)'s step on one host: parameters, optimizer state and every
               rank's gradients in one MPI shared-memory window; each rank sums, clips and
               updates its part of them in place, between two barriers (DataParallel.shared_step)
  K sharded    the step across hosts (RnnlmTrainer(..., shared_memory=False) on one): large
               gradients reduce-scattered, each rank clips and updates its part, parameters
               allgathered (DataParallel.sharded_step)
  K overlap    (--overlap) the output layer's gradients (the largest block, final first in the
               backward) reduced with a non-blocking Iallreduce started as soon as that layer's
               backward returns, waited for after the rest of the backward

Also prints the host (CPU model), the bytes allreduced per step and the time of one Allreduce of
that size between the K ranks, the numbers behind the K-host estimate in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

RECIPES = {  # the recipes of reproduce_ptb.py: (D, H, layers, batch, time, lr, clip, init)
    "book": (100, 100, 1, 20, 35, 20.0, 0.25, "book"),
    "zaremba": (200, 200, 2, 20, 20, 20.0, 0.25, 0.1),
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def worker(a) -> None:
    """One rank of one variant: times a.steps steps after a.warmup, prints JSON on rank 0."""
    from pylstm.datasets import ptb
    from pylstm.distributed import DataParallel
    from pylstm.functional import global_norm
    from pylstm.models import LstmLM, unique_params
    from pylstm.optimizers import SGD, update_scaled
    from pylstm.reference import clip_rate
    from pylstm.trainer import batch_indices

    D, H, L, B, T, lr, clip, init = RECIPES[a.recipe]
    train, w2i, _ = ptb.load_data("train", data_dir=a.data_dir, download=False)
    dist = DataParallel() if a.variant != "one" else None
    MPI = dist.MPI if dist else None
    r0, r1 = dist.rows(B) if dist else (0, B)
    weight = (r1 - r0) / B
    model = LstmLM(len(w2i), D, H, num_layers=L, seed=1, init=init)
    opt = SGD(lr)
    affine = model.layers[-1]
    xs, ts = train[:-1], train[1:]
    if a.variant == "shared":
        dist.share_memory(model, opt)

    def step(k):
        idx = batch_indices(len(xs), B, T, k * T)[r0:r1]
        model.forward(xs[idx].astype(np.int32), ts[idx].astype(np.int32))
        reqs = []
        if a.variant == "overlap":
            dout = model.loss_layer.backward(1.0)
            for layer in reversed(model.layers):
                dout = layer.backward(dout)
                if layer is affine:  # its gradients are final: start their reduction now
                    for g in affine.grads:
                        g *= g.dtype.type(weight)
                        reqs.append(dist.comm.Iallreduce(MPI.IN_PLACE, g, op=MPI.SUM))
        else:
            model.backward()
        params, grads = unique_params(model.params, model.grads)
        if a.variant == "shared":
            dist.shared_step(params, grads, B, opt, clip, None)
            return
        if a.variant == "sharded":
            dist.sharded_step(params, grads, weight, opt, clip, None)
            return
        if dist is not None:
            rest = [g for g in grads if not any(g is h for h in affine.grads)] if reqs else grads
            dist.allreduce_grads(rest, weight)
            MPI.Request.Waitall(reqs)
        update_scaled(opt, params, grads, clip_rate(float(global_norm(grads)), clip))  # (RnnlmTrainer's)

    for k in range(a.warmup):
        step(k)
    if dist:
        dist.comm.Barrier()
    t0 = time.perf_counter()
    for k in range(a.warmup, a.warmup + a.steps):
        step(k)
    if dist:
        dist.comm.Barrier()
    elapsed = time.perf_counter() - t0
    out = {"variant": a.variant, "ranks": dist.size if dist else 1, "steps_per_s": a.steps / elapsed}
    if dist:  # one Allreduce of the step's gradient bytes, alone
        n = sum(int(p.size) for p in unique_params(model.params, model.grads)[0])
        buf = np.ones(n, np.float32)
        times = []
        for _ in range(5):
            dist.comm.Barrier()
            t = time.perf_counter()
            dist.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t)
        out.update(allreduce_bytes=4 * n, allreduce_ms=1e3 * statistics.median(times))
    if dist is None or dist.rank == 0:
        print("JSON " + json.dumps(out), flush=True)


def driver(a) -> None:
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    env = dict(os.environ, PYLSTM_NUM_THREADS=str(a.threads))
    base = [sys.executable, os.path.abspath(__file__), "--worker", "--recipe", a.recipe, "--steps", str(a.steps),
            "--warmup", str(a.warmup)] + (["--data-dir", a.data_dir] if a.data_dir else [])
    jobs = [("one", base + ["--variant", "one"])]
    for v in a.variants.split(",") + (["overlap"] if a.overlap else []):
        jobs.append((v, [mpiexec, "-n", str(a.ranks)] + base + ["--variant", v]))
    results = {v: [] for v, _ in jobs}
    extra = {}
    for _ in range(a.runs):  # alternated: one of each per round
        for v, cmd in jobs:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            line = [x for x in r.stdout.splitlines() if x.startswith("JSON ")]
            if r.returncode != 0 or not line:
                sys.exit(f"{v} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
            d = json.loads(line[0][5:])
            results[v].append(d["steps_per_s"])
            extra.update({k: d[k] for k in ("allreduce_bytes", "allreduce_ms") if k in d})
    one = statistics.median(results["one"])
    print(f"host: {cpu_model()}, {os.cpu_count()} CPUs | recipe {a.recipe} | {a.threads} thread(s) per rank | "
          f"{a.steps} timed steps after {a.warmup}, {a.runs} alternated runs, median (min-max)")
    print(f"gradient bytes per step {extra.get('allreduce_bytes', 0) / 1e6:.1f} MB, one Allreduce of them between "
          f"{a.ranks} ranks {extra.get('allreduce_ms', float('nan')):.2f} ms")
    print("| variant | steps/s | vs 1 rank (medians) | vs 1 rank, paired by round |\n|---|---|---|---|")
    names = {"one": "1 rank", "blocking": f"{a.ranks} ranks, replicated update",
             "sharded": f"{a.ranks} ranks, sharded update", "shared": f"{a.ranks} ranks, shared memory",
             "overlap": f"{a.ranks} ranks, overlap"}
    for v, xs in results.items():
        m = statistics.median(xs)
        # each round's ratio to that round's 1-rank run: robust to the host's speed drifting
        paired = [x / o for x, o in zip(xs, results["one"])]
        print(f"| {names[v]} | {m:.2f} ({min(xs):.2f}-{max(xs):.2f}) | {m / one:.2f}x | "
              f"{statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f}) |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="book")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per rank (and for the 1-rank run)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overlap", action="store_true", help="also the overlapped variant")
    p.add_argument("--variants", default="blocking,sharded,shared",
                   help="the K-rank variants to run beside 1 rank (comma-separated)")
    p.add_argument("--variant", choices=["one", "blocking", "sharded", "shared", "overlap"], default="one",
                   help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.ranks < 2:
        p.error("--ranks must be >= 2")
    if a.worker:
        worker(a)
    else:
        driver(a)


if __name__ == "__main__":
    main()
