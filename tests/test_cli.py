"""The command line, run as a user would (a subprocess), on small settings."""

import os
import subprocess
import sys
import tempfile

import pytest


def run(*args):
    # From a neutral folder: `python -m` puts the working directory first on sys.path, and in a
    # checkout that would import the source tree instead of the installed package.
    env = dict(os.environ, PYTHONWARNINGS="error")
    return subprocess.run([sys.executable, "-m", "pylstm", *args], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), env=env, timeout=300)


QUICK = ["--max-chars", "60000", "--hidden", "32", "--wordvec", "16", "--epochs", "1", "--batch", "8",
         "--time", "16", "--eval-interval", "100", "--sample-length", "80", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = run("train", "--out", str(out), *QUICK)
    assert r.returncode == 0, r.stderr
    return out, r


def test_train_writes_checkpoint_plot_sample(trained):
    out, r = trained
    assert "held-out (test) perplexity" in r.stdout and "unigram baseline" in r.stdout
    assert "| epoch 1 |  iter 1 /" in r.stdout
    assert (out / "checkpoint.npz").exists() and (out / "sample.txt").stat().st_size > 0
    ppl = float(r.stdout.split("held-out (test) perplexity: ")[1].split()[0])
    uni = float(r.stdout.split("unigram baseline on the same split: ")[1].split()[0])
    assert ppl < uni
    if "plot skipped" not in r.stdout:
        assert (out / "perplexity.png").exists()


def test_generate_and_eval(trained):
    out, _ = trained
    r = run("generate", str(out / "checkpoint.npz"), "--length", "50", "--seed", "3", "--prompt", "KING")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("KING") and len(r.stdout.rstrip("\n")) >= 50
    r2 = run("generate", str(out / "checkpoint.npz"), "--length", "50", "--seed", "3", "--prompt", "KING")
    assert r2.stdout == r.stdout
    e = run("eval", str(out / "checkpoint.npz"), "--split", "val", "--batch", "4", "--time", "16")
    assert e.returncode == 0, e.stderr
    assert "val perplexity" in e.stdout


def test_generate_num_samples(trained):
    out, _ = trained
    r = run("generate", str(out / "checkpoint.npz"), "--length", "30", "--seed", "3", "--prompt", "KING",
            "--num-samples", "3")
    assert r.returncode == 0, r.stderr
    parts = r.stdout.split("--- sample ")[1:]
    assert [p.split(" ")[0] for p in parts] == ["1", "2", "3"]
    assert all(p.split("---\n", 1)[1].startswith("KING") for p in parts)


def test_generate_timing_keeps_the_text(trained):
    """--timing reports ms per token on stderr and generates the same text as without it."""
    out, _ = trained
    for extra in ([], ["--num-samples", "2"]):
        args = ("generate", str(out / "checkpoint.npz"), "--length", "40", "--seed", "5", "--prompt", "KING", *extra)
        plain, timed = run(*args), run(*args, "--timing")
        assert plain.returncode == 0 and timed.returncode == 0, timed.stderr
        assert timed.stdout == plain.stdout
        assert "ms per token" in timed.stderr and "ms per token" not in plain.stderr
        assert f"generated 36 tokens x {2 if extra else 1} sequence(s)" in timed.stderr


def test_resume_continues(trained, tmp_path):
    out, _ = trained
    args = list(QUICK)
    args[args.index("--epochs") + 1] = "2"
    r = run("train", "--out", str(out), "--resume", *args)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "| epoch 2 |" in r.stdout and "| epoch 1 |  iter" not in r.stdout


def test_generate_rejects_unknown_characters(trained):
    out, _ = trained
    r = run("generate", str(out / "checkpoint.npz"), "--prompt", "caf\u00e9 \u2603")
    assert r.returncode == 1 and "--prompt" in r.stderr and "not in the model's vocabulary" in r.stderr


def test_corrupt_checkpoint(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"garbage")
    r = run("generate", str(p))
    assert r.returncode == 1 and "not a readable pylstm checkpoint" in r.stderr
    r = run("eval", str(tmp_path / "missing.npz"))
    assert r.returncode == 1 and "no such file" in r.stderr


@pytest.mark.parametrize("args", [["train", "--lr", "-1"], ["train", "--dropout", "1.5"], ["train", "--level", "byte"],
                                  ["train", "--batch", "0"], ["frobnicate"]])
def test_invalid_options_exit_2(args):
    r = run(*args)
    assert r.returncode == 2 and "error" in r.stderr


def test_corpus_too_short(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("hello world\n" * 20, encoding="utf-8")
    r = run("train", "--corpus", str(p), "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 1 and "--batch" in r.stderr


def test_empty_corpus(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("", encoding="utf-8")
    r = run("train", "--corpus", str(p), "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 1 and "empty" in r.stderr


def test_resume_with_another_vocabulary_is_refused(trained, tmp_path):
    out, _ = trained
    p = tmp_path / "other.txt"
    p.write_text("xyz " * 20000, encoding="utf-8")
    r = run("train", "--out", str(out), "--resume", "--corpus", str(p), *QUICK)
    # (the stored settings name the run's corpus, so the contradiction is caught before loading)
    assert r.returncode == 1 and "--corpus" in r.stderr and "contradicts the run being resumed" in r.stderr


def test_ctrl_c_keeps_the_last_checkpoint(tmp_path):
    import signal
    import time

    from pylstm.models import load_checkpoint

    out = tmp_path / "run"
    args = list(QUICK)
    args[args.index("--epochs") + 1] = "1000"
    # (SIGINT back to its default in the child: a test run started in the background of a
    # shell inherits it ignored)
    proc = subprocess.Popen([sys.executable, "-m", "pylstm", "train", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = out / "checkpoint.npz"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint after the first epoch"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    model, extra = load_checkpoint(str(ckpt))
    assert extra["epoch"] >= 1
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_bench_runs():
    r = run("bench", "--", "--shapes", "2,3,8,16", "--repeats", "1", "--no-torch")
    assert r.returncode == 0, r.stderr
    assert "pylstm-cpu vs pylstm-numpy" in r.stdout and "GFLOP/s" in r.stdout


def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    from pylstm import _backend

    if _backend.cuda_status()[0] > 0:
        pytest.skip("a GPU is visible")
    r = run("train", "--device", "cuda", "--out", str(tmp_path / "o"), *QUICK)
    assert r.returncode == 1 and "device 'cuda' is not available" in r.stderr
    assert "Traceback" not in r.stderr


def test_cuda_graphs_flag_needs_the_cuda_device(tmp_path):
    r = run("train", "--cuda-graphs", "--out", str(tmp_path / "o"), *QUICK)
    assert r.returncode == 1 and "--cuda-graphs needs --device cuda" in r.stderr
    assert "Traceback" not in r.stderr


def _edited_checkpoint(src, dst, **changes):
    """A copy of a `pylstm train` checkpoint with metadata fields of its extra replaced (a value
    of ... deletes the field)."""
    import json

    import numpy as np

    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    for k, v in changes.items():
        if v is ...:
            meta["extra"].pop(k, None)
        else:
            meta["extra"][k] = v
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return str(dst)


# field, new value: every one must be a clear error naming the field, in every command that reads it
META_CASES = {
    "level_missing": ("level", ...),
    "level_unknown": ("level", "byte"),
    "level_list": ("level", ["char"]),
    "vocab_int": ("vocab", 5),
    "vocab_short": ("vocab", list("abc")),
    "vocab_not_str": ("vocab", [[1]] * 3),
    "vocab_duplicates": ("vocab", "dup"),
    "max_chars_inf": ("max_chars", float("inf")),
    "max_chars_negative": ("max_chars", -5),
    "max_chars_str": ("max_chars", "x"),
    "corpus_int": ("corpus", 0),
    "corpus_list": ("corpus", ["embedded"]),
}


def _meta_case(trained, tmp_path, case):
    out, _ = trained
    field, value = META_CASES[case]
    if value == "dup":
        from pylstm.models import read_checkpoint_extra

        vocab = read_checkpoint_extra(str(out / "checkpoint.npz"))["vocab"]
        value = [vocab[0]] + vocab[:-1]
    return field, _edited_checkpoint(out / "checkpoint.npz", tmp_path / "bad.npz", **{field: value})


def _main(capsys, *args):
    from pylstm.cli import main

    rc = main(list(args))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "eval"])
@pytest.mark.parametrize("case", sorted(META_CASES))
def test_generate_and_eval_check_every_metadata_field(trained, tmp_path, capsys, command, case):
    """The record `pylstm train` stores is checked whole when a checkpoint is read (a corrupt
    field is a corrupt checkpoint, used or not): an error naming the field, no traceback."""
    field, path = _meta_case(trained, tmp_path, case)
    args = ["--length", "5"] if command == "generate" else ["--batch", "2", "--time", "4"]
    rc, err = _main(capsys, command, path, *args)
    assert rc == 1 and field in err, err


@pytest.mark.parametrize("case", ["vocab_int", "level_list", "max_chars_inf"])
def test_resume_checks_the_metadata_fields(trained, tmp_path, capsys, case):
    field, path = _meta_case(trained, tmp_path, case)
    out = tmp_path / "run"
    out.mkdir()
    os.replace(path, out / "checkpoint.npz")
    rc, err = _main(capsys, "train", "--out", str(out), "--resume", *QUICK)
    assert rc == 1 and field in err, err


def test_eval_never_reads_standard_input_for_a_corpus_named_in_a_checkpoint(trained, tmp_path):
    """A corrupt corpus field of 0 used to open file descriptor 0 and block reading stdin."""
    out, _ = trained
    path = _edited_checkpoint(out / "checkpoint.npz", tmp_path / "fd.npz", corpus=0)
    r = subprocess.run([sys.executable, "-m", "pylstm", "eval", path], capture_output=True, text=True,
                       cwd=tempfile.gettempdir(), input="to be or not to be\n" * 1000, timeout=120)
    assert r.returncode == 1 and "corpus" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_eval_opens_a_text_file_named_in_a_checkpoint_only_when_asked(trained, tmp_path, capsys):
    """A path in a checkpoint is the training run's; eval reads it only when --corpus names it."""
    from pylstm.datasets import text

    out, _ = trained
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text.embedded_text()[:60000], encoding="utf-8")
    path = _edited_checkpoint(out / "checkpoint.npz", tmp_path / "file.npz", corpus=str(corpus))
    rc, err = _main(capsys, "eval", path, "--split", "val", "--batch", "4", "--time", "16")
    assert rc == 1 and "--corpus" in err and str(corpus) in err, err
    rc = _main(capsys, "eval", path, "--corpus", str(corpus), "--split", "val", "--batch", "4", "--time", "16")[0]
    assert rc == 0


@pytest.mark.parametrize("cell", ["rnn", "peephole", "gru"])
def test_train_with_other_cells(tmp_path, cell):
    extra = ("--clip-value", "5", "--init", "keras") if cell == "gru" else ()
    r = run("train", "--out", str(tmp_path), "--cell", cell, *extra, *QUICK)
    assert r.returncode == 0, r.stderr
    assert f"1 x {cell.upper()}(D=16, H=32)" in r.stdout
    if extra:
        assert "(value 5.0) | init keras" in r.stdout
    ppl = float(r.stdout.split("held-out (test) perplexity: ")[1].split()[0])
    uni = float(r.stdout.split("unigram baseline on the same split: ")[1].split()[0])
    assert ppl < uni
    r = run("generate", str(tmp_path / "checkpoint.npz"), "--length", "30", "--seed", "1")
    assert r.returncode == 0, r.stderr


def test_a_second_run_into_the_same_out_is_refused_unless_asked(tmp_path):
    (tmp_path / "checkpoint.npz").write_bytes(b"an earlier run")
    r = run("train", "--out", str(tmp_path), *QUICK)
    assert r.returncode == 1 and "already holds a run" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert (tmp_path / "checkpoint.npz").read_bytes() == b"an earlier run"
    r = run("train", "--out", str(tmp_path), "--resume", "--overwrite", *QUICK)
    assert r.returncode == 1 and "contradict" in r.stderr
    r = run("train", "--out", str(tmp_path), "--overwrite", *QUICK)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "checkpoint.npz").read_bytes() != b"an earlier run"


def test_bench_takes_its_options_directly_and_checks_shapes():
    r = run("bench", "--shapes", "2,3,4,5", "--cell", "rnn", "--repeats", "1", "--no-torch", "--no-numpy")
    assert r.returncode == 0, r.stderr
    assert "| 2,3,4,5 | pylstm-cpu |" in r.stdout
    for bad in ("8,35", "0,35,64,64", "a,b,c,d"):
        r = run("bench", "--shapes", bad)
        assert r.returncode == 2 and "pylstm bench: error: argument --shapes" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = run("bench", "-h")
    assert r.stdout.startswith("usage: pylstm bench") and "issue" not in r.stdout


def test_resume_continues_the_run_as_it_was_started(tmp_path):
    """--resume takes the stored settings (corpus size, sizes, batch, ...); a given option that
    contradicts them is refused, a new --epochs is said out loud."""
    quick = [q for q in QUICK if q not in ("--epochs", "1")]
    r = run("train", "--out", str(tmp_path), "--epochs", "1", *quick)
    assert r.returncode == 0, r.stderr
    first = next(line for line in r.stdout.splitlines() if line.startswith("corpus "))
    r = run("train", "--out", str(tmp_path), "--resume", "--epochs", "2", "--no-progress", "--sample-length", "20")
    assert r.returncode == 0, r.stderr
    assert "continuing to --epochs 2 (the run was started for 1)" in r.stdout
    assert next(line for line in r.stdout.splitlines() if line.startswith("corpus ")) == first  # same max_chars
    assert "x LSTM(D=16, H=32)" in r.stdout and "batch 8 x time 16" in r.stdout
    r = run("train", "--out", str(tmp_path), "--resume", "--hidden", "64")
    assert r.returncode == 1 and "--hidden 64 contradicts the run being resumed (32)" in r.stderr, r.stderr


def test_help_states_the_defaults_and_an_empty_prompt_is_named(trained):
    text = " ".join(run("train", "-h").stdout.split())  # (argparse wraps the lines)
    assert "hidden size H (default 384 at char level, 100 at word level)" in text
    assert "characters at char level, words at word level" in text  # --max-chars
    assert "the prompt included" in " ".join(run("generate", "-h").stdout.split())
    out, _ = trained
    r = run("generate", str(out / "checkpoint.npz"), "--prompt", "")
    assert r.returncode == 1 and r.stderr.startswith("pylstm generate: error: --prompt must hold"), r.stderr


def test_a_short_char_run_samples_text_and_evaluates_the_same_at_any_batch(tmp_path):
    """A short run (a tenth of the corpus, 2 epochs) used to fall into states where characters
    it rarely or never saw as targets ($ Z 3 X) win: its samples were those, and its validation
    perplexity moved severalfold with the evaluation batch (a cold start at some positions
    never recovered). The output bias now starts from the training text's log unigram
    frequencies."""
    r = run("train", "--out", str(tmp_path), "--max-chars", "100000", "--epochs", "2", "--no-progress",
            "--sample-length", "300")
    assert r.returncode == 0, r.stderr
    sample = r.stdout.split("--- sample")[1].split("\n", 1)[1].rsplit("---", 1)[0]
    rare = sum(c in "$Z3XQJ&" for c in sample)
    assert rare < 15, f"{rare} rare characters in the sample: {sample[:80]!r}"
    ppl = {}
    for batch in ("5", "32"):
        r = run("eval", str(tmp_path / "checkpoint.npz"), "--split", "val", "--batch", batch)
        assert r.returncode == 0, r.stderr
        ppl[batch] = float(r.stdout.split("perplexity:")[1])
    assert abs(ppl["32"] / ppl["5"] - 1) < 0.08, ppl  # (cold starts at 32 places cost a little)


def test_eval_finds_a_moved_training_file_by_its_content(tmp_path):
    """The checkpoint keeps the training file's sha256: eval on the file at a new place uses the
    run's split (its --max-chars) as before the move."""
    src = tmp_path / "a" / "corpus.txt"
    src.parent.mkdir()
    from pylstm.datasets import text

    src.write_text(text.embedded_text()[:120000], encoding="utf-8")
    out = tmp_path / "run"
    r = run("train", "--out", str(out), "--corpus", str(src), "--max-chars", "30000", "--hidden", "16",
            "--wordvec", "8", "--epochs", "1", "--batch", "4", "--time", "16", "--no-progress", "--sample-length", "5")
    assert r.returncode == 0, r.stderr
    before = run("eval", str(out / "checkpoint.npz"), "--corpus", str(src), "--split", "val")
    moved = tmp_path / "b" / "renamed.txt"
    moved.parent.mkdir()
    src.rename(moved)
    after = run("eval", str(out / "checkpoint.npz"), "--corpus", str(moved), "--split", "val")
    assert before.returncode == 0 and after.returncode == 0, after.stderr
    assert after.stdout == before.stdout


def test_max_steps_stops_the_run_and_says_so(tmp_path):
    r = run("train", "--out", str(tmp_path), "--max-steps", "3", *QUICK)
    assert r.returncode == 0, r.stderr
    assert "stopped by --max-steps/--max-time in epoch 1 after iteration 3" in r.stdout
    assert (tmp_path / "checkpoint.npz").exists()
