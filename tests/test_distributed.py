"""Data-parallel training on MPI (pylstm.distributed, RnnlmTrainer(comm=...), pylstm train under
mpiexec). The multi-process tests start `mpiexec -n K` on this host (loopback only, a few seconds
each) and skip when mpi4py or mpiexec is missing (pip install 'pylstm[mpi]')."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from pylstm.distributed import draw_rows

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_worker.py")


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the mpich wheel's, in the venv
    return local if os.path.exists(local) else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec: pip install 'pylstm[mpi]'")
TIMEOUT = 120  # seconds for one job: a hang fails the test instead of blocking the run


def _run(args, ranks=None, expect_ok=True):
    """The worker (or any command) alone or under mpiexec -n ranks; returns the CompletedProcess."""
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks else []) + args
    env = dict(os.environ, PYLSTM_NUM_THREADS="1")
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE"):  # (pytest itself under a launcher)
        env.pop(var, None)
    # (from outside the repository: in its root `-m pylstm` would import the source tree)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tempfile.gettempdir())
    if expect_ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def _worker(out, *flags, ranks=None, expect_ok=True):
    os.makedirs(out, exist_ok=True)
    args = [sys.executable, WORKER, str(out)] + list(flags)
    if ranks:
        args.append("--distributed")
    return _run(args, ranks, expect_ok)


def _params(out):
    with np.load(os.path.join(out, "params.npz")) as z:
        return {k: z[k] for k in z.files}


def _assert_same_params(a, b, rtol):
    for k in a:
        if k.startswith("arr_"):
            x, y = a[k], b[k]
            err = float(np.max(np.abs(x - y)) / np.max(np.abs(x)))
            assert err <= rtol, f"parameter {k}: relative difference {err:.3g} > {rtol}"
    assert abs(float(a["ppl"]) - float(b["ppl"])) <= rtol * 10 * float(a["ppl"]), (a["ppl"], b["ppl"])
    # the training loss summed over the steps: every rank's share of each step's batch counted once
    assert abs(float(a["loss_sum"]) - float(b["loss_sum"])) <= rtol * 10 * abs(float(a["loss_sum"])), \
        (a["loss_sum"], b["loss_sum"])


def _per_rank(out, ranks, name):
    """What each rank wrote to its file ``name_<rank>`` (its CRC, batch loss or step's path)."""
    found = []
    for r in range(ranks):
        with open(os.path.join(out, f"{name}_{r}")) as f:
            found.append(f.read())
    return found


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    return bool(np.array_equal(a, b))


# --- the dropout masks: rows of one draw -----------------------------------------------------
@pytest.mark.parametrize("bitgen", [np.random.PCG64, np.random.Philox])
@pytest.mark.parametrize("total,cols,consumed", [(6, 35, 0), (5, 7, 1), (7, 3, 3), (1, 1, 1)])
def test_draw_rows_are_rows_of_the_whole_draw(bitgen, total, cols, consumed):
    """Every split of the rows, drawn rank by rank from the same state, gives the one-process
    mask and leaves the generator where the whole draw leaves it (the next step's masks too)."""
    start = np.random.Generator(bitgen(7))
    start.random(consumed, dtype=np.float32)  # an odd count leaves half a 64-bit draw buffered
    state = start.bit_generator.state
    whole = np.random.Generator(bitgen(0))
    whole.bit_generator.state = state
    expected = [whole.random((total, 2, cols), dtype=np.float32) for _ in range(2)]
    end = whole.bit_generator.state
    for k in range(1, total + 1):
        bounds = np.linspace(0, total, k + 1).astype(int)
        for r0, r1 in zip(bounds[:-1], bounds[1:]):
            g = np.random.Generator(bitgen(0))
            g.bit_generator.state = state
            for step in range(2):
                part = draw_rows(g, (int(r1 - r0), 2, cols), int(r0), total)
                np.testing.assert_array_equal(part, expected[step][r0:r1])
            got = g.bit_generator.state
            if not got.get("has_uint32", 1):  # (a stale buffered value is not part of the state)
                got["uinteger"] = end["uinteger"]
            assert _same_state(got, end)


def test_draw_rows_rejects_rows_outside_the_draw():
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rows"):
        draw_rows(g, (3, 4), 2, 4)


# --- one process: the split, and the errors -----------------------------------------------------
def test_rows_split_the_batch_in_rank_order():
    pytest.importorskip("mpi4py")
    from pylstm.distributed import DataParallel

    class FakeComm:
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return self.size

        def Split_type(self, kind):  # (DataParallel asks for its rank on the host)
            return self

        def Split(self, color, key):
            return self

        def allgather(self, value):  # (every rank on one host: the same answers everywhere)
            return [value] * self.size

        def Free(self):
            pass

    for B, K in ((20, 2), (5, 2), (7, 3), (3, 3)):
        rows = [DataParallel(FakeComm(r, K)).rows(B) for r in range(K)]
        assert rows[0][0] == 0 and rows[-1][1] == B
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        sizes = [r1 - r0 for r0, r1 in rows]
        assert max(sizes) - min(sizes) <= 1
        assert [DataParallel(FakeComm(0, K)).shard_rows(B, rank=r) for r in range(K)] == rows
    with pytest.raises(ValueError, match="^batch_size 2 is smaller than the 3 ranks"):
        DataParallel(FakeComm(0, 3)).rows(2)
    assert DataParallel(FakeComm(2, 3)).shard_rows(2) == (2, 2)  # evaluation: a rank may get no stream
    with pytest.raises(ValueError, match="^check_every must be"):
        DataParallel(FakeComm(0, 1), check_every=0)


def test_train_distributed_without_mpi4py_says_how_to_install(tmp_path):
    """--distributed where mpi4py cannot be imported: a one-line error naming the extra."""
    fake = tmp_path / "nompi" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no MPI here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "nompi"))
    r = subprocess.run([sys.executable, "-m", "pylstm", "train", "--distributed", "--out", str(tmp_path / "run"),
                        "--max-chars", "20000", "--no-progress"], capture_output=True, text=True, env=env,
                       timeout=TIMEOUT, cwd=tempfile.gettempdir())
    assert r.returncode == 1
    assert "pip install 'pylstm[mpi]'" in r.stderr and "--distributed" in r.stderr, r.stderr


# --- K ranks against one process ---------------------------------------------------------------
# How the ranks update: (ranks, worker flags, the path the step must take). "shared": the host's
# shared-memory window (the default on one host); "two hosts": 4 ranks told they are 2 hosts of 2
# (the window per host, the parts summed across hosts by messages); "SGD": plain SGD and an untied
# embedding, whose gradient rows the ranks sum and update sparsely; "sharded": every array split
# among the ranks by messages (shard_min 1); "packed": only the large arrays split (none in these
# small models); "replicated": an allreduce, every rank updating everything.
MODES = {"shared": (2, [], "shared memory"),
         "shared, SGD": (2, ["--sgd", "--untied"], "shared memory, sparse rows"),
         "shared, SGD, 3 ranks": (3, ["--sgd", "--untied"], "shared memory, sparse rows"),
         "two hosts": (4, ["--hosts", "2"], "shared memory"),
         "sharded": (2, ["--shard-min", "1", "--no-shared-memory"], "messages"),
         "packed": (2, ["--no-shared-memory"], "messages"),
         "replicated": (2, ["--no-shard"], "messages")}


@needs_mpi
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype_flag,rtol", [("--float64", 1e-12), ("", 2e-5)])
def test_k_ranks_train_what_one_process_trains(tmp_path, dtype_flag, rtol, mode):
    """K ranks x batch 6/K against 1 process x batch 6, 20 steps of Adam (or plain SGD) with
    dropout 0.3, tied (or untied) weights and global-norm clipping: the same parameters to
    rounding (float64: 1e-12; float32: the gradient sums' rounding, amplified by 20 Adam steps,
    measured ~1e-6), identical on every rank, and the same sharded evaluation."""
    ranks, flags, path = MODES[mode]
    dtype = [dtype_flag] if dtype_flag else []
    model = [f for f in flags if f in ("--sgd", "--untied")]  # (the one-process run trains the same)
    _worker(tmp_path / "one", *dtype, *model, "--val")
    _worker(tmp_path / "k", *dtype, *flags, "--val", ranks=ranks)
    _assert_same_params(_params(tmp_path / "one"), _params(tmp_path / "k"), rtol)
    assert len(set(_per_rank(tmp_path / "k", ranks, "crc"))) == 1
    assert len(set(_per_rank(tmp_path / "k", ranks, "loss"))) == 1  # every rank summed the same losses
    assert set(_per_rank(tmp_path / "k", ranks, "path")) == {path}


@needs_mpi
@pytest.mark.parametrize("flags", [["--sgd", "--untied"], []])
def test_clipping_by_value_then_by_norm_on_every_path(tmp_path, flags):
    """clip_value (binding: 0.01) before the global norm, as one process clips: the shared-memory
    step (with the sparse embedding rows under SGD) and the messages' step train what one
    process trains."""
    clip = ["--float64", "--clip-value", "0.01", *flags]
    _worker(tmp_path / "one", *clip)
    for name, extra in (("shared", []), ("messages", ["--no-shared-memory", "--shard-min", "1"])):
        _worker(tmp_path / name, *clip, *extra, ranks=2)
        _assert_same_params(_params(tmp_path / "one"), _params(tmp_path / name), 1e-12)


@needs_mpi
@pytest.mark.parametrize("flags", [["--sgd", "--untied"], []])
def test_no_norm_clipping_on_every_path(tmp_path, flags):
    """max_grad None: the steps still reduce the loss (and skip the norm) and train what one
    process trains, on one host and on two."""
    base = ["--float64", "--no-max-grad", *flags]
    _worker(tmp_path / "one", *base)
    paths = (("shared", [], 2), ("two hosts", ["--hosts", "2"], 4),
             ("messages", ["--no-shared-memory", "--shard-min", "1"], 2))
    for name, extra, ranks in paths:
        _worker(tmp_path / name, *base, *extra, ranks=ranks)
        _assert_same_params(_params(tmp_path / "one"), _params(tmp_path / name), 1e-12)
        assert len(set(_per_rank(tmp_path / name, ranks, "loss"))) == 1


@needs_mpi
@pytest.mark.parametrize("batch,ranks", [(5, 2), (7, 3)])
def test_an_uneven_split_still_gives_the_whole_batch_mean(tmp_path, batch, ranks):
    _worker(tmp_path / "one", "--float64", "--batch", str(batch))
    _worker(tmp_path / "k", "--float64", "--batch", str(batch), "--shard-min", "1", ranks=ranks)
    _assert_same_params(_params(tmp_path / "one"), _params(tmp_path / "k"), 1e-12)
    assert len(set(_per_rank(tmp_path / "k", ranks, "crc"))) == 1


@needs_mpi
@pytest.mark.parametrize("first,second,batch", [(2, None, 6), (None, 2, 6), (2, 3, 5)])
def test_a_checkpoint_resumes_with_another_number_of_ranks(tmp_path, first, second, batch):
    """10 steps on one side, checkpoint, 10 steps on the other: the 20-step one-process result
    (the checkpoint holds the whole batch's LSTM states, gathered in rank order also from an
    uneven split, and the one dropout stream)."""
    b = ["--batch", str(batch), "--shard-min", "1"]  # (Adam's state in parts: gathered to save)
    _worker(tmp_path / "ref", "--float64", "--steps", "20", *b)
    run = tmp_path / "run"
    _worker(run, "--float64", "--steps", "10", "--checkpoint", *b, ranks=first)
    _worker(run, "--float64", "--steps", "10", "--resume", *b, ranks=second)
    _assert_same_params(_params(tmp_path / "ref"), _params(run), 1e-12)


@needs_mpi
def test_a_failing_rank_ends_every_rank_and_says_so_once(tmp_path):
    r = _worker(tmp_path, "--fail-rank", "1", ranks=2, expect_ok=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert out.count("injected failure at step 3") == 1, out
    assert "rank 1 of 2" in out


@needs_mpi
@pytest.mark.parametrize("ranks,flags", [(2, ["--no-shared-memory"]), (4, ["--hosts", "2"])])
def test_ranks_whose_parameters_drift_apart_are_stopped(tmp_path, ranks, flags):
    """A rank's update goes wrong: its parameters (by messages), or its host's copy (two hosts
    of two ranks sharing memory), no longer match rank 0's at the next check."""
    r = _worker(tmp_path, "--corrupt-rank", str(ranks - 1), *flags, ranks=ranks, expect_ok=False)
    assert r.returncode != 0
    assert "differ from rank 0's" in r.stdout + r.stderr


@needs_mpi
@pytest.mark.parametrize("flag,diff", [(["--time", "8"], "time_size: rank 0 has 7, rank 1 has 8"),
                                       (["--no-shared-memory"], "shared_memory: rank 0 has True, rank 1 has False")])
def test_ranks_started_with_different_runs_are_refused_on_every_rank(tmp_path, flag, diff):
    cmd = [MPIEXEC, "-n", "1", sys.executable, WORKER, str(tmp_path), "--distributed", ":",
           "-n", "1", sys.executable, WORKER, str(tmp_path), "--distributed", *flag]
    r = _run(cmd, expect_ok=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert out.count("RanksDisagree: the training runs differ across the 2 ranks") == 2, out
    assert diff in out


# --- the command line -----------------------------------------------------------------------------
TRAIN = ["-m", "pylstm", "train", "--max-chars", "30000", "--hidden", "32", "--wordvec", "16", "--batch", "8",
         "--time", "16", "--epochs", "1", "--no-progress", "--sample-length", "20", "--dropout", "0.2"]


def _lines(text, prefix):
    return [line for line in text.splitlines() if line.startswith(prefix)]


def _numbers(lines):
    """The perplexities of the lines (the numbers after "perplexity")."""
    return [float(re.search(r"perplexity:? ([0-9.]+)", x).group(1)) for x in lines]


@needs_mpi
def test_train_under_mpiexec_prints_once_and_matches_one_process(tmp_path):
    one = _run([sys.executable] + TRAIN + ["--out", str(tmp_path / "one")])
    two = _run([sys.executable] + TRAIN + ["--out", str(tmp_path / "two")], ranks=2)
    assert len(_lines(two.stdout, "held-out (test) perplexity")) == 1, two.stdout
    assert "distributed: 2 ranks" in two.stdout and "threads 1 per rank" in two.stdout
    # the same training, validation and test perplexities (float32: to rounding)
    for prefix in ("| epoch", "held-out"):
        a, b = _numbers(_lines(one.stdout, prefix)), _numbers(_lines(two.stdout, prefix))
        assert len(a) == len(b) > 0 and np.allclose(a, b, rtol=1e-4), (a, b)
    assert os.path.exists(tmp_path / "two" / "checkpoint.npz")
    # resumed by one process for a second epoch
    again = _run([sys.executable, "-m", "pylstm", "train", "--resume", "--epochs", "2", "--no-progress",
                  "--out", str(tmp_path / "two")])
    assert "resumed from" in again.stdout


@needs_mpi
def test_train_start_up_errors_are_reported_once(tmp_path):
    r = _run([sys.executable] + TRAIN[:-2] + ["--batch", "2", "--out", str(tmp_path / "x")], ranks=3,
             expect_ok=False)
    assert r.returncode == 1
    assert r.stderr.count("--batch 2 is smaller than the 3 ranks") == 1, r.stderr
    assert "(every rank)" in r.stderr
