"""Data-parallel scaling on MPI: training steps per second of the PTB recipes with 1 rank and with
K ranks (one thread each by default), alternated in one run.

    python benchmarks/bench_distributed.py --recipe book --ranks 2 --runs 3 [--data-dir DIR]

Every variant is ``RnnlmTrainer.fit`` itself (plain SGD, global-norm clipping, as the recipes
train), timed over --steps steps after --warmup, each a fresh process or `mpiexec -n K` job
training the same global batch:
  1 rank       fit without comm
  K shared     fit(comm=...) on one host, the default: parameters, optimizer state and every
               rank's gradients in one MPI shared-memory window; each rank sums, clips and
               updates its part in place between two barriers (DataParallel.shared_step)
  K sharded    RnnlmTrainer(..., shared_memory=False), the step used across hosts: large
               gradients reduce-scattered, each rank clips and updates its part, parameters
               allgathered (DataParallel.sharded_step)
  K blocking   RnnlmTrainer(..., sharded_update=False): one allreduce of the gradients
               (DataParallel.allreduce_grads), every rank clipping and updating everything

Also prints the host (CPU model), the bytes of gradients per step and the time of one Allreduce
of that size between the K ranks, the numbers behind the K-host estimate in the README.
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
    """One rank of one variant: times a.steps steps of fit after a.warmup, prints JSON on rank 0."""
    from pylstm.datasets import ptb
    from pylstm.distributed import DataParallel
    from pylstm.models import LstmLM, unique_params
    from pylstm.optimizers import SGD
    from pylstm.trainer import RnnlmTrainer

    D, H, L, B, T, lr, clip, init = RECIPES[a.recipe]
    train, w2i, _ = ptb.load_data("train", data_dir=a.data_dir, download=False)
    dist = DataParallel() if a.variant != "one" else None
    model = LstmLM(len(w2i), D, H, num_layers=L, seed=1, init=init)
    trainer = RnnlmTrainer(model, SGD(lr), log=lambda line: None, comm=dist,
                           sharded_update=a.variant != "blocking", shared_memory=a.variant == "shared")
    xs, ts = train[:-1], train[1:]

    def fit(steps):  # (a second call continues where the first stopped)
        trainer.fit(xs, ts, max_epoch=1, batch_size=B, time_size=T, max_grad=clip, eval_interval=None,
                    progress=False, max_steps=steps)

    fit(a.warmup)
    if dist:
        dist.comm.Barrier()
    t0 = time.perf_counter()
    fit(a.steps)
    if dist:
        dist.comm.Barrier()
    elapsed = time.perf_counter() - t0
    out = {"variant": a.variant, "ranks": dist.size if dist else 1, "steps_per_s": a.steps / elapsed}
    if dist:  # one Allreduce of the step's gradient bytes, alone
        MPI = dist.MPI
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
    for v in a.variants.split(","):
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
             "sharded": f"{a.ranks} ranks, sharded update", "shared": f"{a.ranks} ranks, shared memory"}
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
    p.add_argument("--variants", default="shared,sharded,blocking",
                   help="the K-rank variants to run beside 1 rank (comma-separated)")
    p.add_argument("--variant", choices=["one", "blocking", "sharded", "shared"], default="one",
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
