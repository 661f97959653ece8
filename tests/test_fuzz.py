"""Seeded fuzzing of the functional API and of checkpoint reading (the cases are in
fuzz_worker.py): odd but valid calls against the reference, calls with a broken argument,
corrupted checkpoints. Each batch runs in a child process with a time limit, so a crash or a hang
fails the test instead of taking pytest down. The default run takes a few seconds; ``-m slow``
adds more seeds and cases."""

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_worker.py")


def run_batch(tmp_path, kind, seed, count, timeout):
    # (cwd elsewhere: in the repo root, "import pylstm" would find the source tree, not the install)
    try:
        r = subprocess.run([sys.executable, WORKER, kind, str(seed), str(count)], capture_output=True, text=True,
                           timeout=timeout, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{kind} batch (seed {seed}) did not finish in {timeout} s: a hang")
    assert r.returncode == 0, f"{kind} batch (seed {seed}) died with exit {r.returncode}: {r.stderr[-2000:]}"
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["cases"] == count
    assert report["n_failures"] == 0, f"{kind} batch (seed {seed}):\n" + "\n".join(report["failures"])


# kind, cases in the default run (a second or less each)
BATCHES = [("valid", 300), ("invalid", 1500), ("checkpoint", 40)]


@pytest.mark.parametrize("kind,count", BATCHES, ids=[k for k, _ in BATCHES])
def test_fuzz(tmp_path, kind, count):
    run_batch(tmp_path, kind, seed=0, count=count, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 5))
@pytest.mark.parametrize("kind,count", BATCHES, ids=[k for k, _ in BATCHES])
def test_fuzz_long(tmp_path, kind, count, seed):
    run_batch(tmp_path, kind, seed=seed, count=count * 10, timeout=900)
