"""Truncated-BPTT training of LSTM language models, as in DLfS2 (``RnnlmTrainer``), plus
perplexity evaluation, learning-rate decay, per-epoch checkpoints and exact resumption.

Batching (the book's): the corpus is read by ``batch_size`` cursors spaced
``jump = len // batch_size`` apart; each iteration takes the next ``time_size`` ids from every
cursor, and the LSTM state carries over between iterations.

Data-parallel training (``RnnlmTrainer(..., comm=...)``, MPI): each rank takes a block of the
cursors; see ``pylstm.distributed``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from typing import Callable, Optional

import numpy as np

from ._devices import array_module, to_host, to_module
from .checkpoint import CheckpointError, read_checkpoint_extra
from .distributed import DataParallel, RanksDisagree, corpus_digest
from .functional import clip_grads, clip_grads_by_value, global_norm
from .layers import Embedding
from .models import LstmLM, _layer_state, _set_layer_state, unique_params
from .optimizers import fuses_scaling, sgd_rows, update_scaled
from .reference import clip_rate_checked

__all__ = ["RnnlmTrainer", "eval_perplexity", "batch_indices", "perplexity"]


_TRAINER_KEYS = ("time_idx", "epoch", "loss_sum", "loss_count", "ppl_list", "val_ppl_list", "rng")


def perplexity(mean_loss: float) -> float:
    """exp(mean cross-entropy), inf past float range (a diverged run) instead of OverflowError."""
    return math.exp(mean_loss) if mean_loss < 709.0 else math.inf


def batch_indices(data_size: int, batch_size: int, time_size: int, time_idx: int) -> np.ndarray:
    """(batch_size, time_size) corpus positions of the book's get_batch at cursor ``time_idx``."""
    jump = data_size // batch_size
    offsets = np.arange(batch_size)[:, None] * jump
    return (offsets + time_idx + np.arange(time_size)[None, :]) % data_size


def _check_corpus(name, corpus, min_len):
    corpus = np.asarray(corpus)
    if corpus.ndim != 1 or corpus.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array of ids, got {corpus.dtype} with shape {corpus.shape}")
    if corpus.size < min_len:
        raise ValueError(f"{name} has {corpus.size} ids; at least {min_len} are needed")
    return corpus


def _as_dist(comm, check_every: int = 100) -> Optional[DataParallel]:
    """None, a DataParallel, or an mpi4py communicator (wrapped)."""
    if comm is None or isinstance(comm, DataParallel):
        return comm
    return DataParallel(comm, check_every=check_every)


def eval_perplexity(model: LstmLM, corpus, batch_size: int = 10, time_size: int = 35,
                    verbose: bool = False, comm=None) -> float:
    """The book's eval_perplexity: exp(mean loss) over the corpus read as batch_size streams.
    The model's state is reset before and after.

    ``comm`` (an mpi4py communicator or a ``DataParallel``): the streams are shared out among
    the ranks (a rank may get none) and the losses summed, weighted by each rank's share; every
    rank returns the same perplexity, that of the whole corpus."""
    corpus = _check_corpus("corpus", corpus, batch_size * time_size + 1)
    dist = _as_dist(comm)
    n = corpus.size
    max_iters = (n - 1) // (batch_size * time_size)
    jump = (n - 1) // batch_size
    r0, r1 = dist.shard_rows(batch_size) if dist is not None else (0, batch_size)
    model.reset_state()
    total = 0.0
    xp = array_module(model.params[0])
    corpus = to_module(corpus.astype(np.int32), xp)  # on the GPU: moved once
    offsets = to_module(np.arange(r0, r1)[:, None] * jump + np.arange(time_size)[None, :], xp)
    for it in range(max_iters if r1 > r0 else 0):
        pos = offsets + it * time_size
        xs = corpus[pos % n]
        ts = corpus[(pos + 1) % n]
        try:
            total += model.forward(xs, ts, train_flg=False)  # a device scalar on the GPU: no wait
        except BaseException as exc:
            if dist is not None and dist.size > 1:  # the other ranks wait in the reduction below
                dist.abort(exc, prefix="pylstm eval_perplexity")
            raise
        if verbose:
            sys.stderr.write(f"\reval {it + 1}/{max_iters}")
    if verbose:
        sys.stderr.write("\n")
    model.reset_state()
    total = float(total)
    if dist is not None:
        total = dist.allreduce_sum(total * (r1 - r0) / batch_size)
    return perplexity(total / max_iters)


class _Progress:
    """tqdm when available and attached to a terminal; otherwise nothing."""

    def __init__(self, total, desc, enabled):
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, n=1, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix, refresh=False)

    def write(self, msg, log):
        """Print above the bar (tqdm.write) when the log is plain print, else through log."""
        if self.bar is not None and log is print:
            self.bar.write(msg)
        else:
            log(msg)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class RnnlmTrainer:
    """Trains a language model with truncated BPTT (the book's RnnlmTrainer, extended).

    ``fit(xs, ts, max_epoch, batch_size, time_size, max_grad, eval_interval)`` as in the book;
    optional: validation corpus with lr decay when its perplexity stops improving, a checkpoint
    path written atomically after every epoch, and ``resume`` from such a checkpoint.

    ``comm``: an mpi4py communicator (or a ``pylstm.distributed.DataParallel``) for data-parallel
    training: every rank builds the same trainer and calls ``fit`` with the same arguments and
    corpus (checked at its start); each takes its block of the batch's rows, the gradients are
    averaged over the ranks every step, and the result is that of one process with the whole
    batch, to rounding. Rank 0 logs, shows progress and writes checkpoints (every rank passes the
    same ``checkpoint``: the LSTM states are gathered); every rank reads the checkpoint it resumes
    from. When ``fit`` raises on one rank of several once the ranks have begun to communicate
    (``abort_on_error``), the error is printed there and the whole job is ended (``Abort``): the
    other ranks would wait for it forever (with ``abort_on_error=False`` they do). Argument
    errors, raised alike on every rank before that, are plain exceptions. ``check_every``: steps
    between checks that the ranks' parameters are identical.
    """

    def __init__(self, model: LstmLM, optimizer, log: Callable[[str], None] = print, comm=None,
                 check_every: int = 100, abort_on_error: bool = True, sharded_update: bool = True,
                 shared_memory: bool = True):
        self.model = model
        self.optimizer = optimizer
        self.dist = _as_dist(comm, check_every)
        self.abort_on_error = abort_on_error
        self.sharded_update = bool(sharded_update)
        self.shared_memory = bool(shared_memory)
        self._resumed_states = None  # data-parallel resume: the whole batch's states, for fit
        self._sparse_layers: list = []  # embeddings whose gradients fit keeps sparse (_sgd_step)
        self._in_collectives = False
        if self.dist is not None and self.dist.rank != 0:
            log = _no_log  # one copy of every line: rank 0's
        self.time_idx = 0
        self.ppl_list: list = []
        self.val_ppl_list: list = []
        # per finished epoch: how many perplexity points existed at its end, and its learning rate
        self.epoch_marks: list = []
        self.lr_list: list = []
        self.epoch_iter = 0  # iterations of current_epoch already done (a run stopped by a limit)
        self.eval_interval = None
        self.current_epoch = 0
        self.log = log
        self.loss_sum, self.loss_count = 0.0, 0  # losses since the last perplexity line
        self.meta: dict = {}  # JSON-able values saved in every checkpoint (e.g. the vocabulary)

    @property
    def is_root(self) -> bool:
        """Whether this process logs and writes files (rank 0, or a single process)."""
        return self.dist is None or self.dist.rank == 0

    def _rows(self, batch_size: int) -> tuple:
        return self.dist.rows(batch_size) if self.dist is not None else (0, batch_size)

    def get_batch(self, xs, ts, batch_size, time_size):
        r0, r1 = self._rows(batch_size)
        idx = batch_indices(len(xs), batch_size, time_size, self.time_idx)[r0:r1]
        self.time_idx += time_size
        return xs[idx].astype(np.int32), ts[idx].astype(np.int32)

    def _state(self) -> dict:
        st = dict(self.meta)
        st.update({"time_idx": self.time_idx, "epoch": self.current_epoch, "epoch_iter": self.epoch_iter,
                   "loss_sum": float(self.loss_sum), "loss_count": self.loss_count,
              "ppl_list": list(self.ppl_list), "val_ppl_list": list(self.val_ppl_list),
              "epoch_marks": list(self.epoch_marks), "lr_list": list(self.lr_list),
              "rng": _rng_states(self.model)})
        if self.dist is not None and self.dist.size > 1:  # (sharded steps leave each rank its parts)
            params = unique_params(self.model.params, self.model.grads)[0]
            self.dist.gather_optimizer_state(params, self.optimizer)
        st["optimizer"] = type(self.optimizer).__name__
        for k, v in self.optimizer.state_dict().items():
            st[f"opt_{k}"] = v if isinstance(v, np.ndarray) else float(v)
        for i, layer in enumerate(self.model.lstm_layers):
            h, c = _layer_state(layer)
            if self.dist is not None:  # the whole batch's state, rows in rank order (a collective)
                have = self.dist.comm.allgather(h is not None)
                if not all(have):
                    continue
                h = self.dist.gather_rows(to_host(h))
                c = self.dist.gather_rows(to_host(c)) if c is not None else None
            if h is not None:
                st[f"lstm{i}_h"] = to_host(h)
                if c is not None:
                    st[f"lstm{i}_c"] = to_host(c)
        return st

    def save_checkpoint(self, path: str) -> None:
        """Write the model and the training state (atomically). Data-parallel: every rank must
        call it (the LSTM states are gathered); rank 0 writes."""
        extra = self._state()
        if self.is_root:
            self.model.save(path, extra=extra)

    def resume(self, path: str) -> None:
        """Load a checkpoint written by ``fit`` (model, optimizer, cursors, LSTM states, RNG):
        the next ``fit`` continues exactly where the saved run stopped. The file is checked
        first (a trainer checkpoint, for this optimizer, every field of the right type and
        range: counters integers in [0, 2**62), the loss sum finite and >= 0, perplexities > 0,
        optimizer and LSTM states real floating point): a bad one raises ``CheckpointError``
        naming the field and changes nothing."""
        extra = read_checkpoint_extra(path)
        missing = [k for k in _TRAINER_KEYS if k not in extra]
        if missing:
            raise CheckpointError(f"{path}: not a trainer checkpoint (written by model.save rather than "
                                  f"fit/save_checkpoint?): missing {', '.join(missing)}")
        saved = extra.get("optimizer")  # absent in files from before it was recorded
        if saved is not None and saved != type(self.optimizer).__name__:
            raise CheckpointError(f"{path}: optimizer state of {saved}, this trainer's optimizer is "
                                  f"{type(self.optimizer).__name__}")
        # Everything the trainer takes from the file is converted and tried on throwaway
        # objects first; the model's load checks its own part; only then is anything assigned.
        opt = {k[4:]: v for k, v in extra.items() if k.startswith("opt_")}
        try:
            time_idx, epoch, loss_count = (_count(extra, k) for k in ("time_idx", "epoch", "loss_count"))
            epoch_iter = _count(extra, "epoch_iter") if "epoch_iter" in extra else 0  # (older files: 0)
            loss_sum = _real(extra, "loss_sum")
            if not (math.isfinite(loss_sum) and loss_sum >= 0):  # a sum of cross-entropies
                raise ValueError(f"loss_sum must be a finite number >= 0, got {loss_sum}")
            ppl_list, val_ppl_list = _perplexities(extra, "ppl_list"), _perplexities(extra, "val_ppl_list")
            epoch_marks, lr_list = _history(extra, len(ppl_list))
            trial = copy.copy(self.optimizer)
            try:
                trial.load_state_dict(opt)
            except (TypeError, ValueError) as exc:  # its messages start with the key, opt_<key> in the file
                raise type(exc)(f"opt_{exc}") from exc
            shapes = [p.shape for p in unique_params(self.model.params, self.model.grads)[0]]
            for sname in trial._state_names:
                state = getattr(trial, sname)
                if state is not None and [a.shape for a in state] != shapes:
                    raise ValueError(f"optimizer state {sname!r} has shapes {[a.shape for a in state]}, "
                                     f"the model's parameters {shapes}")
            rng = extra["rng"]
            n_drop = len(self.model.drop_layers)
            if not isinstance(rng, list) or len(rng) != n_drop:
                got = f"{len(rng)} states" if isinstance(rng, list) else type(rng).__name__
                raise ValueError(f"rng must be a list of {n_drop} dropout generator states (one per layer), got {got}")
            for k, (layer, st) in enumerate(zip(self.model.drop_layers, rng)):
                bitgen = type(layer.rng.bit_generator)
                try:
                    bitgen().state = st
                except (KeyError, TypeError, ValueError, OverflowError) as exc:
                    raise ValueError(f"rng[{k}] is not a {bitgen.__name__} state ({exc})") from exc
            states = {}
            for i, layer in enumerate(self.model.lstm_layers):
                if f"lstm{i}_h" in extra:
                    dt = layer.params[0].dtype
                    h = _lstm_state(extra, f"lstm{i}_h", dt)
                    # an RNN layer has no c: h stands in for the shape check and is not used
                    c = _lstm_state(extra, f"lstm{i}_c", dt) if hasattr(layer, "c") else h
                    if h.ndim != 2 or h.shape != c.shape or h.shape[1] != layer.params[1].shape[0] or not h.size:
                        raise ValueError(f"lstm{i}_h, lstm{i}_c: LSTM {i} state of shape {h.shape}/{c.shape}, "
                                         f"expected (N, {layer.params[1].shape[0]}) with N >= 1")
                    states[i] = (h, c)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CheckpointError(f"{path}: malformed trainer state ({type(exc).__name__}: {exc})") from exc
        self.model.load_params(path)
        self.time_idx, self.current_epoch, self.epoch_iter = time_idx, epoch, epoch_iter
        self.loss_sum, self.loss_count = loss_sum, loss_count
        self.ppl_list, self.val_ppl_list = ppl_list, val_ppl_list
        self.epoch_marks, self.lr_list = epoch_marks, lr_list
        self.optimizer.load_state_dict(opt)
        if self.dist is not None:  # each rank takes its rows when fit knows the batch size
            self._resumed_states = {i: (h, c if hasattr(self.model.lstm_layers[i], "c") else None)
                                    for i, (h, c) in states.items()}
            for layer in self.model.lstm_layers:
                layer.reset_state()
        else:
            for i, (h, c) in states.items():
                layer = self.model.lstm_layers[i]
                xp = array_module(layer.params[0])
                _set_layer_state(layer, to_module(h, xp), to_module(c, xp))
        _set_rng_states(self.model, rng)

    def fit(self, xs, ts, max_epoch: int = 10, batch_size: int = 20, time_size: int = 35,
            max_grad: Optional[float] = None, eval_interval: Optional[int] = 20,
            val_corpus=None, lr_decay: float = 0.25, checkpoint: Optional[str] = None,
            progress: bool = True, lr_schedule: Optional[Callable[[int], float]] = None,
            max_steps: Optional[int] = None, max_time: Optional[float] = None,
            clip_value: Optional[float] = None):
        """Train for epochs ``current_epoch .. max_epoch - 1``.

        ``clip_value``: clamp every gradient element to [-clip_value, clip_value]
        (``clip_grads_by_value``) before the global-norm clipping of ``max_grad``; either, both
        or neither.

        ``max_steps`` / ``max_time`` (seconds) stop this call early, at an iteration boundary: the
        checkpoint is then written where it stopped (mid-epoch included) and ``resume`` + ``fit``
        continues from that iteration exactly. ``self.stopped_early`` says whether it did.

        ``val_corpus``: evaluated after each epoch; when its perplexity does not improve, the
        lr is multiplied by ``lr_decay``. ``lr_schedule(epoch) -> lr`` overrides that.
        ``checkpoint``: path written atomically after each epoch (and on Ctrl-C, the last
        complete epoch's file is kept). Returns the list of training perplexities.
        """
        self._in_collectives = False  # (argument errors, raised alike on every rank, need no abort)
        try:
            return self._fit(xs, ts, max_epoch, batch_size, time_size, max_grad, eval_interval, val_corpus,
                             lr_decay, checkpoint, progress, lr_schedule, max_steps, max_time, clip_value)
        except BaseException as exc:
            if self.dist is not None and self.dist.size > 1 and self.abort_on_error \
                    and self._in_collectives and not isinstance(exc, RanksDisagree):
                self.dist.abort(exc, prefix="pylstm fit")
            raise
        finally:
            self._in_collectives = False

    def _start_ranks(self, xs, ts, val_corpus, settings: dict) -> None:
        """Data-parallel start: the same run on every rank (else a clear error everywhere), then
        rank 0's parameters, optimizer state and dropout generator everywhere."""
        dist, model = self.dist, self.model
        params = unique_params(model.params, model.grads)[0]
        same = dict(settings)
        same.update(model=model.config, params=[(tuple(p.shape), str(p.dtype)) for p in params],
                    arrays=array_module(params[0]).__name__,
                    optimizer=type(self.optimizer).__name__, lr=float(self.optimizer.lr),
                    xs=corpus_digest(xs), ts=corpus_digest(ts), val_corpus=corpus_digest(val_corpus),
                    position=(self.current_epoch, self.epoch_iter, self.time_idx))
        dist.check_same(same, "the training runs")
        dist.broadcast_arrays(params)
        opt = dist.broadcast(self.optimizer.state_dict() if dist.rank == 0 else None)
        if dist.rank != 0:
            self.optimizer.load_state_dict(opt)
        _set_rng_states(model, dist.broadcast(_rng_states(model) if dist.rank == 0 else None))

    def _fit(self, xs, ts, max_epoch, batch_size, time_size, max_grad, eval_interval, val_corpus,
             lr_decay, checkpoint, progress, lr_schedule, max_steps, max_time, clip_value):
        xs = _check_corpus("xs", xs, batch_size * time_size)
        ts = _check_corpus("ts", ts, batch_size * time_size)
        if len(xs) != len(ts):
            raise ValueError(f"xs and ts must have the same length, got {len(xs)} and {len(ts)}")
        for name, v in (("max_epoch", max_epoch), ("batch_size", batch_size), ("time_size", time_size)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if max_grad is not None and not max_grad > 0:
            raise ValueError(f"max_grad must be > 0 or None, got {max_grad}")
        if clip_value is not None and not (isinstance(clip_value, (int, float)) and not isinstance(clip_value, bool)
                                           and 0 < clip_value < float("inf")):
            raise ValueError(f"clip_value must be a finite number > 0 or None, got {clip_value!r}")
        if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) < 1):
            raise ValueError(f"max_steps must be an integer >= 1 or None, got {max_steps}")
        if max_time is not None and not (isinstance(max_time, (int, float)) and max_time > 0):
            raise ValueError(f"max_time must be a number of seconds > 0 or None, got {max_time}")
        self.stopped_early = False
        steps = 0
        model, dist = self.model, self.dist
        r0, r1 = self._rows(batch_size)  # this rank's rows of every batch
        weight = (r1 - r0) / batch_size  # its share of the mean gradient
        if dist is not None:
            self._in_collectives = True  # from here a failure on one rank must end them all
            self._start_ranks(xs, ts, val_corpus, dict(
                max_epoch=max_epoch, batch_size=batch_size, time_size=time_size, max_grad=max_grad,
                clip_value=clip_value, eval_interval=eval_interval, lr_decay=lr_decay,
                lr_schedule=lr_schedule is not None, max_steps=max_steps, max_time=max_time,
                checkpoint=bool(checkpoint), sharded_update=self.sharded_update,
                shared_memory=self.shared_memory))  # (save_checkpoint is a collective: every rank or none)
        pending, self._resumed_states = self._resumed_states, None
        for i, layer in enumerate(model.lstm_layers):
            if pending is not None and i in pending:  # a resumed run's whole batch: this rank's rows
                h, c = pending[i]
                xp_l = array_module(layer.params[0])
                if h.shape[0] == batch_size:
                    _set_layer_state(layer, to_module(h[r0:r1].copy(), xp_l),
                                     to_module(c[r0:r1].copy(), xp_l) if c is not None else None)
                else:
                    layer.reset_state()
                continue
            h, c = _layer_state(layer)
            if h is not None and h.shape[0] != r1 - r0:  # a state left by predict() on another batch size
                layer.reset_state()
        max_iters = len(xs) // (batch_size * time_size)
        xp = array_module(model.params[0])
        on_device = xp is not np
        saved_checks = (model.layers[0].check_ids, model.loss_layer.check_labels)
        if on_device:
            # The corpus is checked and moved to the GPU once; batches are gathered there, the
            # loss and the non-finite-gradient flag stay there until a perplexity line.
            V = model.config["vocab_size"]
            for name, c in (("xs", xs), ("ts", ts)):
                if c.min() < 0 or c.max() >= V:
                    raise ValueError(f"{name}: ids must be in [0, {V}), got values in [{c.min()}, {c.max()}]")
            xs_dev, ts_dev = xp.asarray(xs.astype(np.int32)), xp.asarray(ts.astype(np.int32))
            base = xp.asarray(batch_indices(len(xs), batch_size, time_size, 0)[r0:r1])
            nonfinite = xp.zeros((), np.int32)
        self.eval_interval = eval_interval
        start = time.time()
        best_val = min(self.val_ppl_list) if self.val_ppl_list else float("inf")
        for layer in model.drop_layers:  # data-parallel: this rank's rows of the batch's masks
            layer.rows = (r0, batch_size) if dist is not None else None
        # the parameters in host shared memory, the gradients summed there (DataParallel.shared_step)
        shared = (dist is not None and not on_device and self.sharded_update and self.shared_memory
                  and dist.can_share_memory(unique_params(model.params, model.grads)[0]))
        if shared:
            dist.share_memory(model, self.optimizer)
        # One process, plain SGD on the CPU: the embeddings' gradients kept sparse (_sgd_step).
        # (Data-parallel, the reduction writes other ranks' rows into them: share_memory decides.)
        self._sparse_layers = []
        if (dist is None or dist.size == 1) and not on_device and fuses_scaling(self.optimizer):
            self._sparse_layers = [layer for layer in model.layers if isinstance(layer, Embedding)]
        for layer in self._sparse_layers:
            layer.sparse_grad = True
        done = False
        try:
            self._epochs(xs, ts, max_epoch, batch_size, time_size, max_grad, eval_interval, val_corpus,
                         lr_decay, checkpoint, progress, lr_schedule, max_steps, max_time, clip_value,
                         steps, start, best_val, max_iters, weight, xp, on_device, saved_checks,
                         (xs_dev, ts_dev, base, nonfinite) if on_device else None)
            done = True
        finally:
            for layer in model.drop_layers:
                layer.rows = None
            for layer in self._sparse_layers:
                layer.sparse_grad = False
            self._sparse_layers = []
            if shared:
                dist.release_memory(model, self.optimizer, collective=done)
        if dist is not None:
            params = unique_params(model.params, model.grads)[0]
            dist.check_identical(params, "at the end of fit")
            if dist.size > 1 and not shared:  # (shared: every host's state was whole)
                dist.gather_optimizer_state(params, self.optimizer)
        return self.ppl_list

    def _sgd_step(self, params, grads, max_grad) -> None:
        """Plain SGD on host arrays, one process: clipping's factor applied in the update's one
        pass over the parameters, as clip_grads would have scaled the gradients; an embedding in
        sparse mode (its gradient zero outside the rows its batch touched) read and updated in
        those rows only."""
        rows_of = {id(layer.grads[0]): layer for layer in self._sparse_layers}
        dense_p, dense_g, sparse = [], [], []
        for p, g in zip(params, grads):
            layer = rows_of.get(id(g))
            if layer is not None and layer.grad_rows is not None and layer.grads[0] is g:
                sparse.append((p, layer.grad_rows, g[layer.grad_rows]))
            else:
                dense_p.append(p)
                dense_g.append(g)
        rate = 1.0
        if max_grad is not None:
            rate = clip_rate_checked(float(global_norm(dense_g + [g for _, _, g in sparse])), max_grad)
        update_scaled(self.optimizer, dense_p, dense_g, rate)
        for p, rows, g in sparse:
            sgd_rows(self.optimizer, p, rows, g, rate)

    def _epochs(self, xs, ts, max_epoch, batch_size, time_size, max_grad, eval_interval, val_corpus,
                lr_decay, checkpoint, progress, lr_schedule, max_steps, max_time, clip_value,
                steps, start, best_val, max_iters, weight, xp, on_device, saved_checks, dev):
        model, optimizer, dist = self.model, self.optimizer, self.dist
        sharded = dist is not None and dist.size > 1 and not on_device and self.sharded_update
        shared = sharded and dist.shares_memory
        if on_device:
            xs_dev, ts_dev, base, nonfinite = dev
        for epoch in range(self.current_epoch, max_epoch):
            if lr_schedule is not None:
                optimizer.lr = float(lr_schedule(epoch))
            epoch_lr = float(optimizer.lr)
            bar = _Progress(max_iters, f"epoch {epoch + 1}/{max_epoch}", progress and self.is_root)
            if on_device:  # checked once above; per-step checks would wait for the GPU
                model.layers[0].check_ids = model.loss_layer.check_labels = False
            try:
                for it in range(min(self.epoch_iter, max_iters), max_iters):
                    out_of_time = max_time is not None and time.time() - start >= max_time
                    if dist is not None and max_time is not None:
                        out_of_time = dist.broadcast(out_of_time)  # the ranks stop at the same step
                    if (max_steps is not None and steps >= max_steps) or out_of_time:
                        self.stopped_early = True
                        break
                    steps += 1
                    if on_device:
                        idx = (base + self.time_idx) % len(xs)
                        self.time_idx += time_size
                        bx, bt = xs_dev[idx], ts_dev[idx]
                    else:
                        bx, bt = self.get_batch(xs, ts, batch_size, time_size)
                    loss = model.forward(bx, bt)
                    model.backward()
                    params, grads = unique_params(model.params, model.grads)
                    if dist is not None:
                        if steps % dist.check_every == 0:
                            dist.check_identical(params, f"step {steps}")
                        if not shared:  # the whole batch's loss on every rank (shared: in the step)
                            loss = dist.allreduce_sum(float(loss) * weight)
                    if shared:  # summed in host shared memory, each rank updates its part there
                        _, loss = dist.shared_step(params, grads, batch_size, optimizer, max_grad, clip_value,
                                                   loss=float(loss))
                    elif sharded:  # reduce-scatter, each rank clips and updates its part, allgather
                        dist.sharded_step(params, grads, weight, optimizer, max_grad, clip_value)
                    else:
                        if dist is not None:  # the whole batch's mean gradient on every rank
                            dist.allreduce_grads(grads, weight)
                        if clip_value is not None:
                            clip_grads_by_value(grads, clip_value)
                        if not on_device and fuses_scaling(optimizer):
                            self._sgd_step(params, grads, max_grad)
                        else:
                            if max_grad is not None:
                                norm = clip_grads(grads, max_grad, error_if_nonfinite=not on_device)
                                if on_device:
                                    nonfinite += ~xp.isfinite(norm)
                            optimizer.update(params, grads)
                    self.loss_sum += loss
                    self.loss_count += 1
                    self.epoch_iter = it + 1
                    if on_device:
                        bar.update(1)
                    else:
                        bar.update(1, loss=f"{loss:.3f}")
                    if eval_interval and it % eval_interval == 0:
                        if on_device and int(nonfinite):
                            raise FloatingPointError(
                                "grads: the global gradient norm was NaN or inf at a step since the "
                                "last perplexity line (on the GPU this is reported here, not at once)")
                        ppl = perplexity(float(self.loss_sum) / self.loss_count)
                        bar.write(f"| epoch {epoch + 1} |  iter {it + 1} / {max_iters} | time "
                                  f"{int(time.time() - start)}[s] | perplexity {ppl:.2f}", self.log)
                        self.ppl_list.append(float(ppl))
                        self.loss_sum, self.loss_count = 0.0, 0
            finally:
                bar.close()
                model.layers[0].check_ids, model.loss_layer.check_labels = saved_checks
            if self.stopped_early:  # mid-epoch: keep where it stopped, for resume
                if checkpoint:
                    self.save_checkpoint(checkpoint)
                break
            self.current_epoch = epoch + 1
            self.epoch_iter = 0
            self.epoch_marks.append(len(self.ppl_list))
            self.lr_list.append(epoch_lr)
            if val_corpus is not None:
                saved = [_layer_state(layer) for layer in model.lstm_layers]
                val = eval_perplexity(model, val_corpus, batch_size=min(10, batch_size), time_size=time_size,
                                      comm=dist)
                for layer, (h, c) in zip(model.lstm_layers, saved):
                    _set_layer_state(layer, h, c)
                self.val_ppl_list.append(val)
                self.log(f"| epoch {epoch + 1} | valid perplexity {val:.2f} | lr {optimizer.lr:.4g}")
                if lr_schedule is None:
                    if val < best_val:
                        best_val = val
                    else:
                        optimizer.lr *= lr_decay
            if checkpoint:
                self.save_checkpoint(checkpoint)
        return self.ppl_list

    def plot(self, path: str, ylim=None, test_ppl: Optional[float] = None,
             baseline: Optional[float] = None) -> str:
        """Write the perplexity history as a PNG (needs matplotlib: pip install pylstm[plot]), on a
        log scale (the first points of a run are orders of magnitude above the rest): training
        perplexity, validation perplexity at the end of each epoch, the test perplexity and a
        baseline (e.g. a unigram model) as lines when given, and the epochs where the learning
        rate changed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("plot() needs matplotlib: pip install 'pylstm[plot]'") from exc
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        ax.plot(np.arange(len(self.ppl_list)), self.ppl_list, label="train", color="tab:blue")
        marks = self.epoch_marks[-len(self.val_ppl_list):] if self.val_ppl_list else []
        if len(marks) == len(self.val_ppl_list) and marks:
            ax.plot([m - 1 for m in marks], self.val_ppl_list, "o-", label="validation (per epoch)",
                    color="tab:orange")
        if test_ppl is not None:
            ax.axhline(test_ppl, color="tab:green", linestyle="--", label=f"test {test_ppl:.2f}")
        if baseline is not None:
            ax.axhline(baseline, color="tab:gray", linestyle=":", label=f"unigram {baseline:.2f}")
        for k in range(1, min(len(self.lr_list), len(self.epoch_marks))):
            if self.lr_list[k] != self.lr_list[k - 1]:
                x = self.epoch_marks[k - 1] - 0.5
                ax.axvline(x, color="tab:red", alpha=0.4, linewidth=1)
                ax.annotate(f"lr {self.lr_list[k]:.3g}", (x, 1), xycoords=("data", "axes fraction"),
                            xytext=(2, -12), textcoords="offset points", fontsize=7, color="tab:red")
        ax.set_yscale("log")
        ax.set_xlabel(f"iterations (x{self.eval_interval or 1})")
        ax.set_ylabel("perplexity (log scale)")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title("pylstm training perplexity")
        ax.legend(fontsize=8)
        fig.tight_layout()
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path


def _history(extra: dict, n_points: int):
    """The per-epoch plot history (absent in files from before it was recorded: empty lists),
    checked: epoch_marks non-decreasing counts of at most n_points, one finite lr > 0 each."""
    marks, lrs = extra.get("epoch_marks", []), extra.get("lr_list", [])
    if not isinstance(marks, list) or not isinstance(lrs, list) or len(marks) != len(lrs):
        raise ValueError("epoch_marks and lr_list must be lists of one entry per epoch")
    prev = 0
    for m in marks:
        if isinstance(m, bool) or not isinstance(m, int) or not prev <= m <= n_points:
            raise ValueError(f"epoch_marks must be non-decreasing counts up to {n_points}, got {m!r}")
        prev = m
    for v in lrs:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"lr_list must hold finite numbers > 0, got {v!r}")
    return list(marks), [float(v) for v in lrs]


def _real(extra: dict, key: str) -> float:
    v = extra[key]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{key} must be a number, got {type(v).__name__}")
    try:
        return float(v)
    except OverflowError:  # an int past float range
        return math.inf if v > 0 else -math.inf


def _count(extra: dict, key: str) -> int:
    """A counter or cursor of the trainer's state: an integer in [0, 2**62) (one past int64 range
    would overflow in the batch indices; a negative one would index backwards)."""
    v = _real(extra, key)
    if not (math.isfinite(v) and v == int(v) and 0 <= extra[key] < 2**62):
        raise ValueError(f"{key} must be an integer in [0, 2**62), got {extra[key]}")
    return int(extra[key])


def _perplexities(extra: dict, key: str) -> list:
    """A perplexity history: numbers > 0 (inf for a diverged stretch, never NaN)."""
    v = extra[key]
    if not isinstance(v, list):
        raise TypeError(f"{key} must be a list of perplexities, got {type(v).__name__}")
    out = [_real({f"{key}[{k}]": x}, f"{key}[{k}]") for k, x in enumerate(v)]
    bad = [x for x in out if not x > 0]
    if bad:
        raise ValueError(f"{key} must hold perplexities > 0, got {bad[0]}")
    return out


def _lstm_state(extra: dict, key: str, dtype) -> np.ndarray:
    a = np.asarray(extra[key])
    if a.dtype.kind != "f":  # a complex state would lose its imaginary part in the cast
        raise TypeError(f"{key} must be a real floating-point array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def _no_log(msg: str) -> None:
    """The log of the ranks other than 0."""


def _rng_states(model) -> list:
    return [layer.rng.bit_generator.state for layer in model.drop_layers]


def _set_rng_states(model, states) -> None:
    for layer, st in zip(model.drop_layers, states):
        layer.rng.bit_generator.state = st
        layer._device_rng = None  # (CuPy's generator: seeded again from this state on first use)
