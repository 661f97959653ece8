"""Reproduces published PTB perplexities with pylstm and reports wall time.

  --recipe book     DLfS2 ch. 6 train_rnnlm.py: Rnnlm(V, 100, 100), batch 20, time 35, SGD lr 20,
                    clip 0.25, 4 epochs (the book reports test perplexity ~136).
  --recipe zaremba  Zaremba et al. 2014 "small", non-regularized: 2 x LSTM 200, 13 epochs, lr 1.0
                    halved after each epoch from the 5th, clip 5, batch 20, 20 steps, uniform(-0.1,
                    0.1) init (paper: 114.5 test). Their loss is summed over the 20 time steps
                    (mean over the batch); pylstm's is the mean over both, so lr and clip scale by
                    20: lr 20, clip 0.25 give the same updates.

  --backend numpy runs the same layers on the NumPy reference: the book's algorithm in NumPy,
  for the wall-time comparison in the same sitting.

  Data-parallel: `mpiexec -n K python benchmarks/reproduce_ptb.py ...` (or --distributed) trains
  with K ranks, each taking batch/K of the streams (pylstm.distributed); set the threads per rank
  with PYLSTM_NUM_THREADS. --max-steps stops early and reports the training steps per second.

The PTB files come from --data-dir, else wherever pylstm.datasets.ptb finds them ($PYLSTM_DATA_DIR,
the cache); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time

import pylstm
from pylstm.datasets import ptb
from pylstm.distributed import DataParallel, mpi_launched
from pylstm.models import LstmLM
from pylstm.optimizers import SGD
from pylstm.trainer import RnnlmTrainer, eval_perplexity

RECIPES = {
    "book": dict(wordvec=100, hidden=100, layers=1, batch=20, time=35, lr=20.0, clip=0.25, epochs=4,
                 init="book", decay_from=None, eval_batch=10, eval_time=35),
    "zaremba": dict(wordvec=200, hidden=200, layers=2, batch=20, time=20, lr=20.0, clip=0.25, epochs=13,
                    init=0.1, decay_from=4, eval_batch=1, eval_time=20),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="book")
    p.add_argument("--backend", choices=["auto", "cpu", "numpy"], default="auto")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch count")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cell", choices=["lstm", "gru", "peephole", "rnn"], default="lstm",
                   help="recurrent cell of every layer, same recipe (default lstm)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the GEMMs' operands (bf16: rounded to bfloat16, float32 sums)")
    p.add_argument("--json", default=None)
    p.add_argument("--distributed", action="store_true", help="MPI data-parallel (implied under mpiexec -n K>1)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (throughput runs)")
    a = p.parse_args(argv)
    r = dict(RECIPES[a.recipe])
    if a.epochs:
        r["epochs"] = a.epochs
    data_dir = a.data_dir
    train, w2i, _ = ptb.load_data("train", data_dir=data_dir, download=False)
    val, _, _ = ptb.load_data("val", data_dir=data_dir, download=False)
    test, _, _ = ptb.load_data("test", data_dir=data_dir, download=False)
    V = len(w2i)
    model = LstmLM(V, r["wordvec"], r["hidden"], num_layers=r["layers"], backend=a.backend, seed=a.seed,
                   init=r["init"], cell=a.cell, precision=a.precision)
    opt = SGD(r["lr"])
    dist = DataParallel() if (a.distributed or mpi_launched() > 1) else None
    root = dist is None or dist.rank == 0
    say = print if root else (lambda *args, **kwargs: None)
    trainer = RnnlmTrainer(model, opt, comm=dist)
    schedule = None
    if r["decay_from"] is not None:
        lr0, start = r["lr"], r["decay_from"]
        schedule = lambda epoch: lr0 * 0.5 ** max(0, epoch + 1 - start)  # noqa: E731
    ranks = 1 if dist is None else dist.size
    say(f"recipe {a.recipe}: {r} | cell {a.cell} | backend {a.backend} | threads {pylstm.get_num_threads()}"
        f" | ranks {ranks}", flush=True)
    t0 = time.time()
    trainer.fit(train[:-1], train[1:], max_epoch=r["epochs"], batch_size=r["batch"], time_size=r["time"],
                max_grad=r["clip"], eval_interval=100, progress=False, lr_schedule=schedule,
                val_corpus=val if a.recipe == "zaremba" and not a.max_steps else None, max_steps=a.max_steps)
    train_s = time.time() - t0
    if a.max_steps:  # a throughput run: no evaluation
        steps = a.max_steps if trainer.stopped_early else None
        say(f"RESULT recipe={a.recipe} cell={a.cell} precision={a.precision} ranks={ranks} "
            f"threads={pylstm.get_num_threads()} "
            f"steps={steps} train_time_s={train_s:.2f} steps_per_s={steps / train_s:.2f}", flush=True)
        return
    t1 = time.time()
    test_ppl = eval_perplexity(model, test, batch_size=r["eval_batch"], time_size=r["eval_time"], comm=dist)
    eval_s = time.time() - t1
    say(f"RESULT recipe={a.recipe} cell={a.cell} precision={a.precision} backend={a.backend} epochs={r['epochs']} "
        f"ranks={ranks} "
        f"train_time_s={train_s:.1f} test_ppl={test_ppl:.2f} eval_time_s={eval_s:.1f}", flush=True)
    if a.json and root:
        with open(a.json, "w") as f:
            json.dump({"recipe": a.recipe, "cell": a.cell, "precision": a.precision, "config": r,
                       "backend": a.backend, "train_time_s": train_s,
                       "test_ppl": test_ppl, "eval_time_s": eval_s, "ranks": ranks,
                       "threads_per_rank": pylstm.get_num_threads(), "date": time.strftime("%Y-%m-%d")}, f)


if __name__ == "__main__":
    main()
