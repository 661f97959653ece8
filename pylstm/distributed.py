"""Data-parallel training on MPI (mpi4py): K processes, on one host or many, train one model.

The split is the book's batching cut into K blocks of rows: the global batch of B streams is read
by B cursors; rank r takes rows ``[r0, r1)`` of every (B, T) batch (``DataParallel.rows``), so
the K ranks together see exactly the sequences one process with batch B would. After each
backward the gradients, each weighted by its rank's share of the rows (n_r / B), are summed:
on a host, in an MPI shared-memory window that also holds the host's one copy of the parameters
and optimizer state (``_HostWindow``, ``DataParallel.shared_step``); between hosts, or without
the window, by messages (``sharded_step``, ``allreduce_grads``). The update is that of the
full-batch mean gradient, clipped by the global norm, the same on every host, so the parameters
stay identical across ranks (checked every ``check_every`` steps and at the end of ``fit`` with a
CRC of every parameter).

Dropout masks are rows of the mask one process would draw for the whole batch: every rank keeps
the same generator state, skips the other ranks' rows (``draw_rows``) and draws its own. Hence a
K-rank run follows the one-process run to the rounding of the gradient sum, with or without
dropout, and a checkpoint resumes with any K to that rounding. (On the GPU, CuPy's generator is
seeded from that state when a ``fit`` starts: the ranks agree, but a resumed run's GPU masks are
not the uninterrupted run's.)

Device arrays (CuPy) are reduced by CUDA-aware MPI when every rank's library says it is one,
else by NCCL (``cupy.cuda.nccl``) when every rank has it, else through host memory; the choice is
made once, by all ranks together, and ``DataParallel.transport`` names it. Each rank of a host
takes its own GPU (``use_local_gpu``).
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from typing import Optional, Sequence

import numpy as np

from ._devices import array_module, to_host
from .functional import clip_grads_by_value, global_norm
from .optimizers import sgd_rows, update_scaled
from .reference import clip_rate_checked

__all__ = ["DataParallel", "RanksDisagree", "mpi_launched", "import_mpi", "draw_rows", "MPI_INSTALL_HINT"]

MPI_INSTALL_HINT = ("data-parallel training needs mpi4py and an MPI library: pip install 'pylstm[mpi]' "
                    "(mpi4py and MPICH, with mpiexec, as wheels)")

# Environment variables by which the common launchers tell a process the job's size.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")


class RanksDisagree(ValueError):
    """The ranks were started with different runs; raised on every rank at once (no rank is
    left waiting, so nothing is aborted)."""


def mpi_launched() -> int:
    """The number of processes the MPI launcher started, read from its environment (1 when not
    started by mpiexec): without importing MPI, so that a plain run never needs it."""
    for var in _LAUNCHER_SIZE_VARS:
        v = os.environ.get(var, "")
        if v.isdigit():
            return int(v)
    return 1


def import_mpi():
    """mpi4py's MPI module, or ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(MPI_INSTALL_HINT) from exc
    return MPI


def _skip_uint32(rng: np.random.Generator, m: int) -> None:
    """Move a PCG64 generator past m 32-bit draws (the unit of ``random(dtype=float32)``, which
    takes each 64-bit output as two 32-bit halves, keeping one in a buffer)."""
    bg = rng.bit_generator
    if m <= 0:
        return
    st = bg.state
    if st["has_uint32"]:  # the buffered half is the next draw
        st["has_uint32"], st["uinteger"] = 0, 0
        bg.state = st
        m -= 1
    if m >= 2:
        bg.advance(m // 2)  # (advance also empties the buffer)
    if m % 2:
        rng.random(1, dtype=np.float32)


def draw_rows(rng: np.random.Generator, shape: tuple, row0: int, total_rows: int) -> np.ndarray:
    """Rows ``[row0, row0 + shape[0])`` of ``rng.random((total_rows,) + shape[1:], float32)``,
    leaving ``rng`` where that whole draw would: with PCG64 (numpy's default) by skipping the
    other rows' draws, with any other generator by drawing them all."""
    per_row = int(np.prod(shape[1:], dtype=np.int64))
    rows = int(shape[0])
    if not 0 <= row0 <= row0 + rows <= total_rows:
        raise ValueError(f"rows [{row0}, {row0 + rows}) are not within the {total_rows} rows of the draw")
    if type(rng.bit_generator) is np.random.PCG64:
        _skip_uint32(rng, row0 * per_row)
        out = rng.random(rows * per_row, dtype=np.float32).reshape(shape)
        _skip_uint32(rng, (total_rows - row0 - rows) * per_row)
        return out
    full = rng.random((total_rows,) + tuple(shape[1:]), dtype=np.float32)
    return np.ascontiguousarray(full[row0:row0 + rows])


def params_crc(params: Sequence) -> int:
    """CRC-32 of the parameters' bytes (host copies of device arrays): a cheap identity check."""
    crc = 0
    for p in params:
        crc = zlib.crc32(memoryview(np.ascontiguousarray(to_host(p))).cast("B"), crc)
    return crc


_ALIGN = 64  # bytes: every array and every rank's part of the window starts on a cache line


class _HostWindow:
    """One MPI shared-memory window per host (``MPI.Win.Allocate_shared``) holding the model's
    parameters and the optimizer's state once for the host, and every local rank's gradients.

    The host's ranks compute with the same parameter arrays. A step: each rank's backward writes
    its gradients into its own region; after a barrier, local rank j sums part j of every rank's
    region (``weighted_sum``: one pass, no message), the parts are summed across hosts by the
    ranks with the same local rank (one ``Allreduce`` per rank, 1/L of the bytes each), local
    rank j clips and updates part j of the parameters and of the state in place, and a second
    barrier makes the new parameters every rank's. Nothing is gathered: the host has one copy.
    Each rank also leaves its weighted loss in a line of scalars of its own.

    ``rows``: arrays whose gradients are zero outside the rows each rank lists (embeddings in
    sparse mode, under plain SGD, on one host). They lie after the others, outside the parts:
    each rank publishes its rows in the window, and the union of the host's rows is shared out
    among the ranks instead, each summing and updating its share of those rows only.
    """

    def __init__(self, dist: "DataParallel", params: Sequence, n_state: int, rows: Sequence[int] = ()):
        MPI = dist.MPI
        self.dist = dist
        self.dtype = params[0].dtype
        item = self.dtype.itemsize
        step = _ALIGN // item
        self.shapes = [p.shape for p in params]
        self.rows = list(rows)
        self.offsets = [0] * len(params)
        o = 0
        for k in [k for k in range(len(params)) if k not in self.rows] + self.rows:  # (the row arrays last)
            if k == (self.rows[0] if self.rows else None):
                self.n_dense = o
            self.offsets[k] = o
            o += -(-int(params[k].size) // step) * step
        self.n = o  # elements per region (padding included, zero)
        if not self.rows:
            self.n_dense = o
        L = dist.local_size
        self.bounds = [((self.n_dense * j // L) // step) * step for j in range(L)] + [self.n_dense]
        # each rank's row lists: per row array, a count and room for every row (int64)
        self.row_slots = [(sum(int(params[q].shape[0]) + 1 for q in self.rows[:i]), int(params[k].shape[0]))
                          for i, k in enumerate(self.rows)]
        n_ints = -(-sum(cap + 1 for _, cap in self.row_slots) // 8) * 8  # (segments stay 64-byte aligned)
        n_ints += 8  # and a line of float64 scalars (the rank's weighted loss)
        # local rank 0 holds [params | state_1 .. state_S | its gradients | its rows | its
        # scalars]; the others their gradients, rows and scalars
        regions = (1 + n_state + 1) if dist.local_rank == 0 else 1
        own = regions * self.n * item
        self.win = MPI.Win.Allocate_shared(own + 8 * n_ints, 1, comm=dist.host)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        grads, self.ints, self.scalars = [], [], []  # every local rank's gradients, row lists, scalars
        for j in range(L):
            buf, _ = self.win.Shared_query(j)
            r = (1 + n_state + 1) if j == 0 else 1
            flat = np.frombuffer(buf, dtype=self.dtype, count=r * self.n)
            if j == 0:
                self.params_flat = flat[:self.n]
                self.state_flat = [flat[(1 + k) * self.n:(2 + k) * self.n] for k in range(n_state)]
            grads.append(flat[(r - 1) * self.n:])
            self.ints.append(np.frombuffer(buf, dtype=np.int64, count=n_ints - 8, offset=r * self.n * item))
            self.scalars.append(np.frombuffer(buf, dtype=np.float64, count=8,
                                              offset=r * self.n * item + 8 * (n_ints - 8)))
        self.grads_flat = grads
        self.param_views = self.views(self.params_flat)
        self.grad_views = [self.views(f) for f in grads]
        if dist.local_rank == 0:
            np.frombuffer(self.win.tomemory(), dtype=np.uint8)[:] = 0  # (the padding sums to zero)
        else:
            self.grads_flat[dist.local_rank][:] = 0
            self.ints[dist.local_rank][:] = 0
            self.scalars[dist.local_rank][:] = 0
        # the views each step reads, made once: every rank's part of the gradients; this rank's
        # part of the parameters, of its gradients and of each optimizer state (cut by array)
        self.grad_parts = [self.part(f) for f in grads]
        self.param_pieces = self.pieces(self.params_flat)
        self.grad_pieces = self.pieces(grads[dist.local_rank])
        self.state_pieces = [self.pieces(f) for f in self.state_flat]
        self.sync()

    def views(self, flat: np.ndarray) -> list:
        """The arrays' views into one region."""
        return [flat[o:o + int(np.prod(sh, dtype=np.int64))].reshape(sh) for o, sh in zip(self.offsets, self.shapes)]

    def sync(self) -> None:
        """Every rank's writes to the window seen by every rank of the host."""
        self.win.Sync()
        self.dist.host.Barrier()
        self.win.Sync()

    def part(self, flat: np.ndarray) -> np.ndarray:
        j = self.dist.local_rank
        return flat[self.bounds[j]:self.bounds[j + 1]]

    def pieces(self, flat: np.ndarray) -> list:
        """This rank's part of a region cut at the arrays' boundaries (for the optimizer's
        per-array state)."""
        j = self.dist.local_rank
        lo, hi = self.bounds[j], self.bounds[j + 1]
        out = []
        for o, sh in zip(self.offsets, self.shapes):
            a, b = max(lo, o), min(hi, o + int(np.prod(sh, dtype=np.int64)))
            if a < b:
                out.append(flat[a:b])
        return out

    def publish_rows(self, i: int, rows: np.ndarray) -> None:
        """This rank's rows of row array i (the i-th of ``rows``), for the others to read."""
        first, _ = self.row_slots[i]
        mine = self.ints[self.dist.local_rank]
        mine[first] = rows.size
        mine[first + 1:first + 1 + rows.size] = rows

    def row_share(self, i: int) -> np.ndarray:
        """This rank's share of the union of every rank's published rows of row array i (the
        union sorted, cut into L consecutive shares)."""
        first, _ = self.row_slots[i]
        lists = [ints[first + 1:first + 1 + int(ints[first])] for ints in self.ints]
        union = np.unique(np.concatenate(lists))
        L, j = self.dist.local_size, self.dist.local_rank
        return union[union.size * j // L:union.size * (j + 1) // L]

    def free(self) -> None:
        self.sync()
        self.params_flat = self.state_flat = self.grads_flat = self.ints = self.scalars = None
        self.param_views = self.grad_views = self.grad_parts = None
        self.param_pieces = self.grad_pieces = self.state_pieces = None
        self.win.Unlock_all()
        self.win.Free()


class DataParallel:
    """One model trained by the ranks of ``comm`` (an mpi4py communicator; default COMM_WORLD).

    ``check_every``: steps between the checks that the ranks' parameters are still identical.
    ``shard_min``: arrays of at least this many elements are reduced where they lie and, in the
    sharded update, split among the ranks; smaller ones travel packed in one buffer.
    """

    def __init__(self, comm=None, check_every: int = 100, shard_min: int = 1 << 16, host_comm=None):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if isinstance(check_every, bool) or int(check_every) < 1:
            raise ValueError(f"check_every must be an integer >= 1, got {check_every}")
        self.check_every = int(check_every)
        if isinstance(shard_min, bool) or int(shard_min) < 1:
            raise ValueError(f"shard_min must be an integer >= 1, got {shard_min}")
        self.shard_min = int(shard_min)
        # this rank among the ranks of its host (collectives: here, where every rank constructs
        # its DataParallel, not later where a failure on one rank could leave the others waiting).
        # host_comm: the ranks that share memory with this one (default: MPI's own split; the
        # tests pass a finer split to stand for several hosts on one machine).
        self.host = self.comm.Split_type(MPI.COMM_TYPE_SHARED) if host_comm is None else host_comm.Dup()
        self.local_rank, self.local_size = self.host.Get_rank(), self.host.Get_size()
        self.host_ranks = self.host.allgather(self.rank)  # the world ranks of this host, in local order
        sizes = self.comm.allgather(self.local_size)
        # Ranks with the same local rank on every host (used when every host has as many ranks).
        self.cross = self.comm.Split(self.local_rank, self.rank) if len(set(sizes)) == 1 else None
        self.hosts = len(sizes) // self.local_size if self.cross is not None else None
        self._window: Optional[_HostWindow] = None
        self._window_grads, self._window_rows, self._window_state = None, [], []
        self._weights: dict = {}  # shared_step's weights of the host's ranks, by batch size
        self._abandoned: list = []
        self._buf = None
        self._parts: dict = {}  # sharded_step's receive buffers, by array index
        self._transport = None

    # --- the split -----------------------------------------------------------------------
    def rows(self, batch_size: int, what: str = "batch_size") -> tuple:
        """This rank's rows [r0, r1) of a batch of ``batch_size`` streams: contiguous blocks in
        rank order, the first ``batch_size % K`` ranks one row more (gradients are weighted by
        the row counts, so an uneven split still gives the full-batch mean)."""
        if int(batch_size) < self.size:
            raise ValueError(f"{what} {batch_size} is smaller than the {self.size} ranks: every rank needs "
                             f"at least one stream (use a {what} >= {self.size} or fewer ranks)")
        return self.shard_rows(batch_size)

    def shard_rows(self, batch_size: int, rank: Optional[int] = None) -> tuple:
        """Like ``rows`` but allowing ranks with no rows (evaluation with fewer streams than ranks);
        ``rank``: another rank's rows."""
        B, K = int(batch_size), self.size
        r = self.rank if rank is None else int(rank)
        q, extra = divmod(B, K)
        r0 = r * q + min(r, extra)
        return r0, r0 + q + (1 if r < extra else 0)

    # --- collectives -----------------------------------------------------------------------
    @property
    def transport(self) -> str:
        """How device buffers are reduced: "cuda-aware" (the MPI library reads device memory),
        "nccl", or "host" (staged through host memory; also what NumPy arrays use)."""
        return self._transport or "host"

    def use_local_gpu(self) -> int:
        """Make this rank's current CuPy device the GPU of its rank among the ranks of its host
        (round robin when the ranks outnumber the GPUs); returns its index."""
        import cupy

        dev = self.local_rank % cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(dev).use()
        return dev

    def _device_transport(self) -> str:
        if self._transport is None:
            query = getattr(self.MPI, "Query_cuda_support", None)
            aware = bool(query()) if query is not None else False
            try:
                import cupy
                from cupy.cuda import nccl

                has_nccl = bool(nccl.available) if hasattr(nccl, "available") else True
                # NCCL refuses two ranks on one GPU
                has_nccl = has_nccl and self.local_size <= cupy.cuda.runtime.getDeviceCount()
            except ImportError:
                has_nccl = False
            # every rank must take the same path
            if self.comm.allreduce(int(aware), op=self.MPI.MIN):
                self._transport = "cuda-aware"
            elif self.comm.allreduce(int(has_nccl), op=self.MPI.MIN):
                from cupy.cuda import nccl

                uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
                self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
                self._transport = "nccl"
            else:
                self._transport = "host"
        return self._transport

    def _allreduce_inplace(self, buf) -> None:
        xp = array_module(buf)
        way = "host" if xp is np else self._device_transport()
        if way == "nccl":  # queued on the current stream, in order with the kernels around it
            from cupy.cuda import nccl

            kind = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[str(buf.dtype)]
            self._nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, kind, nccl.NCCL_SUM,
                                 xp.cuda.get_current_stream().ptr)
            return
        if xp is np or way == "cuda-aware":
            if xp is not np:
                xp.cuda.get_current_stream().synchronize()  # MPI does not order on CUDA streams
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            return
        host = to_host(buf)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        buf[...] = xp.asarray(host)

    def allreduce_grads(self, grads: Sequence, weight: float) -> None:
        """grads[i] <- sum over ranks of weight_r * grads[i], in place. Large arrays are reduced
        where they lie (no copy into a flat buffer and back: two passes over every gradient, a
        quarter of a step's reduction time at 19 MB); the small ones (biases) are packed into one
        buffer, so that a model's many small arrays cost one message."""
        if self.size == 1 and weight == 1.0:
            return
        xp = array_module(grads[0])
        dtype = grads[0].dtype
        if any(g.dtype != dtype for g in grads):
            raise TypeError(f"gradients of mixed dtypes: {sorted({str(g.dtype) for g in grads})}")
        w = dtype.type(weight)
        small = []
        for g in grads:
            if g.size >= self.shard_min and g.flags.c_contiguous:
                if weight != 1.0:
                    g *= w
                self._allreduce_inplace(g.reshape(-1))
            else:
                small.append(g)
        if not small:
            return
        n = sum(int(g.size) for g in small)
        if self._buf is None or self._buf.size != n or self._buf.dtype != dtype or array_module(self._buf) is not xp:
            self._buf = xp.empty(n, dtype)
        buf, o = self._buf, 0
        for g in small:
            xp.multiply(g.reshape(-1), w, out=buf[o:o + g.size])
            o += g.size
        self._allreduce_inplace(buf)
        o = 0
        for g in small:
            g[...] = buf[o:o + g.size].reshape(g.shape)
            o += g.size

    # --- the sharded update (NumPy arrays) -------------------------------------------------
    def _shards(self, arrays) -> list:
        """(index, lo, hi, counts, displs) of every large contiguous array: this rank's part
        [lo, hi) of its flat elements, the parts in rank order."""
        out = []
        for i, a in enumerate(arrays):
            if a.size >= self.shard_min and a.flags.c_contiguous:
                q, extra = divmod(int(a.size), self.size)
                counts = [q + (1 if r < extra else 0) for r in range(self.size)]
                displs = [sum(counts[:r]) for r in range(self.size)]
                out.append((i, displs[self.rank], displs[self.rank] + counts[self.rank], counts, displs))
        return out

    def _part_buffer(self, i: int, n: int, dtype) -> np.ndarray:
        """The receive buffer of array i's part, kept between steps (a fresh one every step
        would be fresh pages every step)."""
        buf = self._parts.get(i)
        if buf is None or buf.size != n or buf.dtype != dtype:
            buf = self._parts[i] = np.empty(n, dtype)
        return buf

    def _mpi_type(self, dtype):
        return self.MPI.FLOAT if dtype == np.float32 else self.MPI.DOUBLE

    def sharded_step(self, params: Sequence, grads: Sequence, weight: float, optimizer,
                     max_grad: Optional[float], clip_value: Optional[float]) -> float:
        """One update with the work split: each large gradient is reduce-scattered (this rank
        gets the whole batch's sum of its part), the small ones allreduced; this rank clips its
        parts (the global norm from every rank's sum of squares) and updates its part of every
        parameter (and of the optimizer's state); the parameters are then allgathered. The
        clip, the update and the reduction's second half each touch 1/K of the elements, so
        they shrink with K instead of being repeated on every rank. Returns the norm (NaN when
        not clipping by norm)."""
        MPI = self.MPI
        shards = self._shards(params)
        large = {i for i, *_ in shards}
        small = [k for k in range(len(grads)) if k not in large]
        w = grads[0].dtype.type(weight)
        part_g = []
        for i, lo, hi, counts, _ in shards:
            g = grads[i].reshape(-1)
            if weight != 1.0:
                g *= w
            buf = self._part_buffer(i, hi - lo, g.dtype)
            self.comm.Reduce_scatter(g, buf, recvcounts=counts, op=MPI.SUM)
            g[lo:hi] = buf  # (the rest of g is not this rank's: left as it is)
            part_g.append(g[lo:hi])
        small_g = [grads[k] for k in small]
        if small_g:
            self.allreduce_grads(small_g, weight)
        G = part_g + small_g
        P = [params[i].reshape(-1)[lo:hi] for i, lo, hi, _, _ in shards] + [params[k] for k in small]
        if clip_value is not None:
            clip_grads_by_value(G, clip_value)
        norm, rate = float("nan"), 1.0
        if max_grad is not None:
            mine = float(global_norm(part_g)) ** 2 if part_g else 0.0
            rest = float(global_norm(small_g)) ** 2 if small_g else 0.0
            norm = float(np.sqrt(self.comm.allreduce(mine, op=MPI.SUM) + rest))
            rate = clip_rate_checked(norm, max_grad)
        # The optimizer works on this rank's parts, its state as views into the full arrays.
        optimizer._init_state(list(params))
        full = {name: getattr(optimizer, name) for name in optimizer._state_names}
        try:
            for name, st in full.items():
                setattr(optimizer, name, [st[i].reshape(-1)[lo:hi] for i, lo, hi, _, _ in shards] +
                        [st[k] for k in small])
            update_scaled(optimizer, P, G, rate)
        finally:
            for name, st in full.items():
                setattr(optimizer, name, st)
        for i, _, _, counts, displs in shards:
            p = params[i].reshape(-1)
            self.comm.Allgatherv(MPI.IN_PLACE, [p, counts, displs, self._mpi_type(p.dtype)])
        return norm

    # --- parameters in host shared memory (NumPy arrays) ------------------------------------
    @property
    def shares_memory(self) -> bool:
        """Whether a model is attached to a host window (``share_memory``)."""
        return self._window is not None

    def can_share_memory(self, params: Sequence = ()) -> bool:
        """Whether ``share_memory`` applies: several ranks per host, the same number on every
        host (the parts of the window are matched across hosts by local rank), and ``params``
        NumPy arrays of one float dtype."""
        if any(type(p) is not np.ndarray for p in params) or len({p.dtype for p in params}) > 1:
            return False
        if params and params[0].dtype not in (np.float32, np.float64):
            return False
        return self.size > 1 and self.local_size > 1 and self.cross is not None

    def share_memory(self, model, optimizer) -> None:
        """Move the model's parameters and the optimizer's state into one shared-memory window
        per host (``_HostWindow``) and this rank's gradients into its region of it. The model's
        arrays become views of the window: the host's ranks read one copy. Under plain SGD on
        one host, the embeddings' gradients are kept sparse (``Embedding.sparse_grad``) and
        only the rows the host's batches touched are summed and updated. A collective; undo
        with ``release_memory`` (``RnnlmTrainer.fit`` does both)."""
        from .layers import Embedding
        from .models import unique_params
        from .optimizers import fuses_scaling

        if self._window is not None:
            raise RuntimeError("share_memory: a model is attached already")
        params, grads = unique_params(model.params, model.grads)
        if not self.can_share_memory(params):
            raise TypeError("share_memory needs several ranks per host, the same number on every host, and "
                            "the model's parameters as NumPy arrays of one float dtype")
        # the embeddings whose unique gradient is their own (not tied to another layer's)
        sparse = []
        if fuses_scaling(optimizer) and self.hosts == 1:
            for layer in model.layers:
                if isinstance(layer, Embedding):
                    k = next((k for k, g in enumerate(grads) if g is layer.grads[0]), None)
                    if k is not None:
                        sparse.append((k, layer))
        optimizer._init_state(list(params))
        names = [n for n in optimizer._state_names if getattr(optimizer, n) is not None]
        # every rank must lay the window out alike (else each would read the others' wrongly)
        self.check_same({"parameters": [(tuple(p.shape), str(p.dtype)) for p in params],
                         "optimizer state": names, "sparse rows": [k for k, _ in sparse]},
                        "the shared-memory layouts")
        win = _HostWindow(self, params, len(names), rows=[k for k, _ in sparse])
        pviews = win.param_views
        if self.local_rank == 0:
            for v, p in zip(pviews, params):
                v[...] = p
            for k, name in enumerate(names):
                for v, a in zip(win.views(win.state_flat[k]), getattr(optimizer, name)):
                    v[...] = a
        win.sync()
        by_id = {id(p): v for p, v in zip(params, pviews)}
        model._map_params(lambda p: by_id[id(p)])
        gviews = win.grad_views[self.local_rank]
        own = {id(v): g for v, g in zip(pviews, gviews)}
        for layer in model.layers:  # each parameter's first gradient array written in place
            for k, p in enumerate(layer.params):
                g = own.pop(id(p), None)
                if g is not None:
                    layer.grads[k] = g
        model._collect()
        for k, name in enumerate(names):
            setattr(optimizer, name, win.views(win.state_flat[k]))
        for _, layer in sparse:
            layer.sparse_grad = True
        self._window, self._window_state, self._window_grads = win, names, gviews
        self._window_rows = [layer for _, layer in sparse]

    def release_memory(self, model, optimizer, collective: bool = True) -> None:
        """Copy the parameters and the optimizer's state out of the window into private arrays
        and free it (a collective). ``collective=False`` (a rank leaving on an error, the others
        elsewhere): copy without waiting for the others and keep the window allocated."""
        win = self._window
        if win is None:
            return
        for layer in self._window_rows:
            layer.sparse_grad = False
        if collective:
            win.sync()  # (every rank's last update is in)
        model._map_params(lambda p: np.array(p, copy=True))
        for name in self._window_state:
            setattr(optimizer, name, [np.array(a, copy=True) for a in getattr(optimizer, name)])
        for layer in model.layers:  # what else views the window: the last forward's caches
            if getattr(layer, "cache", None) is not None:
                layer.cache = None
            if getattr(layer, "_written", None) is not None:
                layer._written = None
        self._window = self._window_grads = None
        self._window_rows = []
        if collective:
            win.free()
        else:
            self._abandoned.append(win)  # (freeing it is a collective: left to the end of the process)

    def shared_step(self, params: Sequence, grads: Sequence, batch_size: int, optimizer,
                    max_grad: Optional[float], clip_value: Optional[float], *, loss: float) -> tuple:
        """One update through the host window (after ``share_memory``): the gradients of every
        rank, weighted by its share of the ``batch_size`` rows, summed; clipped by the global
        norm and/or by value; this rank's part of the parameters and of the optimizer's state
        updated. ``loss``: this rank's mean loss over its rows. Returns the norm (NaN when not
        clipping by norm) and the whole batch's mean loss, both from one reduction over every
        rank (the step waits for the others at two barriers and that reduction, and across
        hosts at the parts' Allreduce)."""
        win = self._window
        for g, v in zip(grads, self._window_grads):
            if g is not v:  # (a gradient unique_params summed anew: tied or repeated arrays)
                v[...] = g
        for i, layer in enumerate(self._window_rows):
            win.publish_rows(i, layer.grad_rows)
        weights = self._weights.get(batch_size)
        if weights is None:  # each host rank's share of the mean gradient: its rows / B
            weights = self._weights[batch_size] = [
                (r1 - r0) / batch_size for r0, r1 in (self.shard_rows(batch_size, r) for r in self.host_ranks)]
        win.scalars[self.local_rank][0] = float(loss) * weights[self.local_rank]
        win.sync()  # every rank's gradients are in
        mine = win.grad_parts[self.local_rank]
        sumsq = _backend_cpu().weighted_sum(mine, win.grad_parts, weights)
        row_sums = []  # (parameter, this rank's share of the rows, their summed gradient)
        for i, k in enumerate(win.rows):
            share = win.row_share(i)
            acc = np.zeros((share.size,) + win.shapes[k][1:])
            for w, views in zip(weights, win.grad_views):  # in rank order, in double, rounded once
                acc += np.multiply(views[k][share], w, dtype=np.float64)
            g = acc.astype(win.dtype)
            sumsq += float(np.sum(np.square(g, dtype=np.float64)))
            row_sums.append((win.param_views[k], share, g))
        if self.hosts > 1:
            self.cross.Allreduce(self.MPI.IN_PLACE, mine, op=self.MPI.SUM)
        if clip_value is not None:  # (before the norm, as clip_grads_by_value runs in one process)
            clip_grads_by_value([mine] + [g for _, _, g in row_sums], clip_value)
        if max_grad is not None and (self.hosts > 1 or clip_value is not None):  # the sums changed
            sumsq = float(global_norm([mine] + [g for _, _, g in row_sums])) ** 2
        # one reduction over every rank: each part's squares counted once, by cross rank 0
        # (every host holds the whole sums), each host's loss once (by its local rank 0)
        host_loss = 0.0
        if self.local_rank == 0:
            for s in win.scalars:  # (in rank order)
                host_loss += float(s[0])
        both = np.array([sumsq if self.cross.Get_rank() == 0 else 0.0, host_loss])
        self.comm.Allreduce(self.MPI.IN_PLACE, both, op=self.MPI.SUM)
        norm, rate = float("nan"), 1.0
        if max_grad is not None:
            norm = float(np.sqrt(both[0]))
            rate = clip_rate_checked(norm, max_grad)
        full = {name: getattr(optimizer, name) for name in self._window_state}
        try:
            for name, pieces in zip(self._window_state, win.state_pieces):
                setattr(optimizer, name, pieces)
            update_scaled(optimizer, win.param_pieces, win.grad_pieces, rate)
        finally:
            for name, st in full.items():
                setattr(optimizer, name, st)
        for W, share, g in row_sums:
            sgd_rows(optimizer, W, share, g, rate)
        win.sync()  # every rank's part of the new parameters is in
        return norm, float(both[1])

    def gather_optimizer_state(self, params: Sequence, optimizer) -> None:
        """After sharded steps each rank's optimizer state is current only in its parts:
        allgather them (before saving it, and at the end of fit). In a host window the state
        is whole already."""
        if self._window is not None:
            return
        shards = self._shards(params)
        for name in optimizer._state_names:
            st = getattr(optimizer, name)
            if st is None:
                continue
            for i, _, _, counts, displs in shards:
                a = st[i].reshape(-1)
                self.comm.Allgatherv(self.MPI.IN_PLACE, [a, counts, displs, self._mpi_type(a.dtype)])

    def allreduce_sum(self, value: float) -> float:
        return float(self.comm.allreduce(float(value), op=self.MPI.SUM))

    def broadcast_arrays(self, arrays: Sequence) -> None:
        """Rank 0's values into every rank's arrays, in place."""
        for a in arrays:
            xp = array_module(a)
            if xp is np:
                self.comm.Bcast(a, root=0)
            else:
                host = self.comm.bcast(to_host(a) if self.rank == 0 else None, root=0)
                a[...] = xp.asarray(host)

    def broadcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def gather_rows(self, a):
        """Every rank's rows of a (n_r, ...) host array, concatenated in rank order on rank 0
        (None elsewhere)."""
        parts = self.comm.gather(a, root=0)
        return np.concatenate(parts, axis=0) if self.rank == 0 else None

    # --- checks ---------------------------------------------------------------------------
    def check_same(self, what: dict, context: str) -> None:
        """Raise ValueError on every rank when any value of ``what`` differs from rank 0's."""
        everyone = self.comm.allgather(what)
        diffs = []
        for key, v0 in everyone[0].items():
            for r, other in enumerate(everyone[1:], start=1):
                if other.get(key) != v0:
                    diffs.append(f"{key}: rank 0 has {_short(v0)}, rank {r} has {_short(other.get(key))}")
                    break
        if diffs:
            raise RanksDisagree(f"{context} differ across the {self.size} ranks (every rank must run the same "
                             "configuration on the same corpus): " + "; ".join(diffs))

    def check_identical(self, params: Sequence, where: str) -> None:
        """Raise RuntimeError on every rank when the ranks' parameters are no longer identical."""
        crcs = self.comm.allgather(params_crc(params))
        if len(set(crcs)) > 1:
            bad = [r for r, c in enumerate(crcs) if c != crcs[0]]
            raise RuntimeError(f"{where}: the parameters of rank(s) {bad} differ from rank 0's (CRC-32 "
                               f"{[hex(c) for c in crcs]}); the ranks' updates diverged")

    def abort(self, exc: BaseException, prefix: str = "pylstm") -> None:
        """Print ``exc`` once, from this rank, and end every rank of the job (a rank left waiting
        in a collective would hang)."""
        sys.stdout.flush()
        sys.stderr.write(f"{prefix} (rank {self.rank} of {self.size}): {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        time.sleep(0.3)  # the launcher forwards output asynchronously; Abort tears the job down at once
        self.comm.Abort(1)
        os._exit(1)  # (Abort does not return; should a library's return, this rank still ends)


def _backend_cpu():
    from . import _backend

    return _backend.require_cpu()


def _short(v, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def corpus_digest(corpus) -> Optional[str]:
    """A short digest of a corpus of ids, to check that every rank reads the same one."""
    if corpus is None:
        return None
    a = np.ascontiguousarray(to_host(corpus)).astype(np.int64, copy=False)
    return f"{a.size}:{zlib.crc32(memoryview(a).cast('B')):08x}"
