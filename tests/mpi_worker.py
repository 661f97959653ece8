"""One rank of a data-parallel run for tests/test_distributed.py (started by mpiexec, or alone as
the one-process reference).

    python mpi_worker.py OUT [--batch B] [--time T] [--steps S] [--float64] [--dropout R]
                             [--distributed] [--checkpoint] [--resume] [--val]
                             [--fail-rank R] [--corrupt-rank R]

Writes OUT/params.npz (rank 0: the unique parameters after training), OUT/crc_<rank> (every rank:
the CRC-32 of its parameters), OUT/path_<rank> (whether the step went through the host's shared
memory) and, with --checkpoint, OUT/checkpoint.npz.
"""

import argparse
import os
import sys

import numpy as np

from pylstm.distributed import params_crc
from pylstm.models import LstmLM, unique_params
from pylstm.optimizers import SGD, Adam
from pylstm.trainer import RnnlmTrainer, eval_perplexity


def corpus(n=3000, V=40, seed=0):
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.integers(1, 4, n)) % V).astype(np.int64)  # a learnable sequence


def to_float64(model):
    """The model's parameters and gradients as float64 copies (ties kept)."""
    model._map_params(lambda p: p.astype(np.float64))
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--time", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--distributed", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--checkpoint", action="store_true")
    ap.add_argument("--fail-rank", type=int, default=None, help="this rank raises at its 3rd step")
    ap.add_argument("--corrupt-rank", type=int, default=None, help="this rank's update drifts at its 3rd step")
    ap.add_argument("--val", action="store_true", help="also evaluate a validation corpus")
    ap.add_argument("--shard-min", type=int, default=1 << 16, help="DataParallel's shard_min (1: shard everything)")
    ap.add_argument("--no-shard", action="store_true", help="every rank updates every parameter")
    ap.add_argument("--no-shared-memory", action="store_true", help="no host window: MPI messages only")
    ap.add_argument("--clip-value", type=float, default=None, help="fit's clip_value (beside max_grad)")
    ap.add_argument("--no-max-grad", action="store_true", help="fit's max_grad None (else 1.0)")
    ap.add_argument("--sgd", action="store_true", help="plain SGD (embeddings' gradients kept sparse), not Adam")
    ap.add_argument("--untied", action="store_true", help="the output layer's weights not tied to the embedding's")
    ap.add_argument("--hosts", type=int, default=None,
                    help="treat the ranks as this many hosts of consecutive ranks (host_comm)")
    a = ap.parse_args()

    comm, rank = None, 0
    if a.distributed:
        from mpi4py import MPI

        from pylstm.distributed import DataParallel

        world = MPI.COMM_WORLD
        host = world.Split(world.Get_rank() * a.hosts // world.Get_size()) if a.hosts else None
        comm = DataParallel(world, check_every=5, shard_min=a.shard_min, host_comm=host)
        rank = comm.rank
    model = LstmLM(40, 10, 10, num_layers=2, dropout_ratio=a.dropout, tie_weights=not a.untied, seed=3)
    if a.float64:
        to_float64(model)
    if a.fail_rank is not None and rank == a.fail_rank:
        forward, calls = model.forward, [0]

        def failing_forward(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError("injected failure at step 3")
            return forward(*args, **kwargs)
        model.forward = failing_forward
    opt = SGD(lr=0.5) if a.sgd else Adam(lr=0.01)
    if a.corrupt_rank is not None and rank == a.corrupt_rank:
        update, steps = opt.update, [0]

        def drifting_update(params, grads):
            update(params, grads)
            steps[0] += 1
            if steps[0] == 3:
                params[0].reshape(-1)[0] += 1e-6
        opt.update = drifting_update
    shared = []
    if comm is not None:  # which path the step took, for the tests to check
        share = comm.share_memory
        comm.share_memory = lambda *args: (share(*args), shared.append(len(comm._window_rows)))
    trainer = RnnlmTrainer(model, opt, log=lambda msg: None, comm=comm, sharded_update=not a.no_shard,
                           shared_memory=not a.no_shared_memory)
    ckpt = os.path.join(a.out, "checkpoint.npz")
    if a.resume:
        trainer.resume(ckpt)
    data = corpus()
    trainer.fit(data[:-1], data[1:], max_epoch=100, batch_size=a.batch, time_size=a.time,
                max_grad=None if a.no_max_grad else 1.0,
                eval_interval=None, progress=False, max_steps=a.steps,
                val_corpus=data[:500] if a.val else None, checkpoint=ckpt if a.checkpoint else None,
                clip_value=a.clip_value)
    if shared:  # nothing of the run's last step is left to a backward (the window it viewed is freed)
        try:
            model.backward()
            raise AssertionError("backward after fit found a cache")
        except RuntimeError as exc:
            assert "before forward" in str(exc), exc
    params = unique_params(model.params, model.grads)[0]
    with open(os.path.join(a.out, f"crc_{rank}"), "w") as f:
        f.write(str(params_crc(params)))
    with open(os.path.join(a.out, f"loss_{rank}"), "w") as f:  # (every rank's view of the batch loss)
        f.write(repr(float(trainer.loss_sum)))
    with open(os.path.join(a.out, f"path_{rank}"), "w") as f:
        f.write(("shared memory" + (", sparse rows" if shared[0] else "")) if shared else "messages")
    ppl = eval_perplexity(model, data[:700], batch_size=5, time_size=a.time, comm=comm)
    if rank == 0:
        np.savez(os.path.join(a.out, "params.npz"), *params, ppl=ppl,
                 time_idx=trainer.time_idx, loss_sum=trainer.loss_sum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
