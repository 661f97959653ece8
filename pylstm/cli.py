"""The ``pylstm`` command line: train, generate, eval, gradflow, bench.

``pylstm train`` with no arguments trains a character-level LSTM on the corpus embedded in the
package (offline), shows progress and perplexities, evaluates on held-out text against a
unigram baseline, saves a checkpoint and a perplexity plot, and prints a generated sample.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from ._backend import DeviceUnavailableError, set_cuda_graphs
from .models import MODEL_CELLS

__all__ = ["main"]


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(s):
    v = float(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def _ratio(s):
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def _build_parser():
    p = argparse.ArgumentParser(prog="pylstm", description="Fused LSTM kernels and LSTM language models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a language model (default: the embedded corpus)")
    p.train_parser = t
    t.add_argument("--corpus", default="embedded", help="'embedded' (tiny-shakespeare, in the package), "
                   "'ptb' (Penn Treebank; see --data-dir), or a path to a UTF-8 text file")
    t.add_argument("--data-dir", default=None,
                   help="folder with the PTB files (default: $PYLSTM_DATA_DIR, then the cache)")
    t.add_argument("--level", choices=["char", "word"], default=None,
                   help="tokens (default: char for text, word for ptb)")
    t.add_argument("--wordvec", type=_positive_int, default=None,
                   help=f"embedding size D ({_level_default('wordvec')})")
    t.add_argument("--hidden", type=_positive_int, default=None, help=f"hidden size H ({_level_default('hidden')})")
    t.add_argument("--layers", type=_positive_int, default=1, help="recurrent layers (default 1)")
    t.add_argument("--cell", choices=sorted(MODEL_CELLS), default="lstm",
                   help="recurrent cell: LSTM (default), peephole LSTM, or a vanilla RNN (tanh, or relu)")
    t.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the GEMMs' operands: fp32 (default) or bf16 (rounded to bfloat16, float32 sums; CPUs "
                        "with AVX512-BF16). A run setting: --resume may change it")
    t.add_argument("--dropout", type=_ratio, default=0.0, help="dropout ratio (default 0)")
    t.add_argument("--tie", action="store_true", help="tie embedding and output weights (D == H)")
    t.add_argument("--epochs", type=_positive_int, default=None, help=f"({_level_default('epochs')})")
    t.add_argument("--optimizer", choices=["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"], default=None,
                   help=f"({_level_default('optimizer')})")
    t.add_argument("--lr", type=_positive_float, default=None, help=f"learning rate ({_level_default('lr')})")
    t.add_argument("--clip", type=_positive_float, default=None,
                   help=f"global-norm gradient clip ({_level_default('clip')})")
    t.add_argument("--clip-value", type=_positive_float, default=None,
                   help="also clamp every gradient element to [-v, v] first (default: off; the "
                        "character-level recipe of min-char-rnn uses 5)")
    t.add_argument("--init", choices=["book", "keras", "torch"], default="book",
                   help="weight initialization: the book's (default), Keras's or PyTorch's defaults")
    t.add_argument("--batch", type=_positive_int, default=None,
                   help=f"batch size, parallel streams ({_level_default('batch')})")
    t.add_argument("--time", type=_positive_int, default=None,
                   help=f"truncated-BPTT length ({_level_default('time')})")
    t.add_argument("--eval-interval", type=_positive_int, default=None,
                   help=f"iterations between perplexity lines ({_level_default('eval_interval')})")
    t.add_argument("--backend", choices=["auto", "cpu", "numpy"], default="auto")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="train on the CPU (NumPy) or the GPU (CuPy; pip install 'pylstm[cuda]')")
    t.add_argument("--cuda-graphs", action="store_true",
                   help="with --device cuda: run each LSTM forward/backward as a CUDA graph")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=_positive_int, default=None,
                   help="threads per process (default: $PYLSTM_NUM_THREADS, else the cores, shared out "
                        "among the ranks on each host)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training over MPI (on by itself under mpiexec -n K with K > 1; "
                        "needs pip install 'pylstm[mpi]')")
    t.add_argument("--out", default="pylstm-run", help="output directory (checkpoint, plot, sample)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (without it, an OUT holding a checkpoint is refused)")
    t.add_argument("--sample-length", type=_positive_int, default=None,
                   help=f"tokens in the sample printed at the end ({_level_default('sample_length')})")
    t.add_argument("--temperature", type=_positive_float, default=0.8)
    t.add_argument("--max-chars", type=_positive_int, default=None,
                   help="use only the first MAX_CHARS tokens of a text corpus: characters at char level, "
                   "words at word level (quick runs)")
    t.add_argument("--max-steps", type=_positive_int, default=None,
                   help="stop after this many training steps (the checkpoint continues from there with --resume)")
    t.add_argument("--max-time", type=_positive_float, default=None,
                   help="stop after this many seconds of training (likewise resumable)")
    t.add_argument("--no-progress", action="store_true")

    g = sub.add_parser("generate", help="sample text from a checkpoint")
    g.add_argument("checkpoint")
    g.add_argument("--length", type=_positive_int, default=300,
                   help="tokens in the output, the prompt included (default 300)")
    g.add_argument("--temperature", type=_positive_float, default=0.8)
    g.add_argument("--top-k", type=_positive_int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--prompt", default=None, help="text to start from (default: a newline / <eos>)")
    g.add_argument("--timing", action="store_true",
                   help="print the time per generated token (after one untimed warm-up token) to stderr")
    g.add_argument("--num-samples", type=_positive_int, default=1,
                   help="sequences to sample at once, as one batch (printed one after another)")

    e = sub.add_parser("eval", help="perplexity of a checkpoint on a corpus split",
                       description="Perplexity of a checkpoint on a split of its training corpus (or of "
                       "--corpus). A text file named in a checkpoint is never opened unless --corpus names "
                       "it: a checkpoint does not choose what eval reads.")
    e.add_argument("checkpoint")
    e.add_argument("--corpus", default=None,
                   help="'embedded', 'ptb' or a UTF-8 text file (default: the checkpoint's corpus when it is "
                   "'embedded' or 'ptb'; a file it was trained on must be named here)")
    e.add_argument("--data-dir", default=None,
                   help="folder with the PTB files (default: $PYLSTM_DATA_DIR, then the cache)")
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--batch", type=_positive_int, default=10)
    e.add_argument("--time", type=_positive_int, default=35)

    f = sub.add_parser("gradflow", help="plot how gradients vanish or explode back through time (RNN vs LSTM)",
                       description="Backpropagates a loss on the last step through T steps of a vanilla RNN "
                       "(recurrent weights scaled as DLfS2 ch. 6 does) and of an LSTM, and prints and plots "
                       "the norm of dL/dh k steps back (and the LSTM's cell path, dL/dc).")
    f.add_argument("--steps", type=_positive_int, default=50, help="sequence length T")
    f.add_argument("--hidden", type=_positive_int, default=64, help="hidden size H (= input size)")
    f.add_argument("--scales", type=_positive_float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="RNN recurrent weight scales: Wh = scale * randn(H, H) / sqrt(H)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", default="gradflow.png", help="the PNG to write")

    b = sub.add_parser("bench", help="run the kernel benchmark (pylstm vs NumPy reference vs torch)")
    b.add_argument("args", nargs=argparse.REMAINDER, help="options for the benchmark (see pylstm bench -h)")
    return p


# --- data ---------------------------------------------------------------------------------
def _file_sha256(path: str) -> str:
    from .datasets.ptb import file_sha256

    return file_sha256(path)


def _load_corpus(corpus: str, level: str, max_chars=None, data_dir=None):
    """Returns (train, val, test, vocab_list, level)."""
    from .datasets import ptb, text

    if corpus == "ptb":
        if level == "char":
            raise ValueError("--level char is not available for --corpus ptb (a word-level corpus)")
        train, w2i, i2w = ptb.load_data("train", data_dir=data_dir)
        val, _, _ = ptb.load_data("val", data_dir=data_dir)
        test, _, _ = ptb.load_data("test", data_dir=data_dir)
        return train, val, test, [i2w[i] for i in range(len(i2w))], "word"
    level = level or "char"
    if corpus == "embedded":
        data, vocab = text.load_embedded(level=level)
    else:
        data, vocab = text.load_text(corpus, level=level)
    if max_chars:
        data = data[:max_chars]
    tr, va, te = text.split(data)
    return tr, va, te, vocab.to_list(), level


def _unigram_perplexity(train, test, V):
    counts = np.bincount(train, minlength=V).astype(np.float64) + 1.0  # add-one smoothing
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[test].mean()))


# Defaults that depend on the tokens: (character level, word level). One table for the help and
# for _defaults.
_LEVEL_DEFAULTS = dict(wordvec=(48, 100), hidden=(384, 100), epochs=(3, 4), optimizer=("adam", "sgd"),
                       lr=(0.004, 20.0), clip=(5.0, 0.25), batch=(32, 20), time=(64, 35),
                       eval_interval=(50, 20), sample_length=(400, 60))


def _level_default(key: str) -> str:
    char, word = _LEVEL_DEFAULTS[key]
    return f"default {char} at char level, {word} at word level"


def _defaults(a):
    word = a.level == "word" or a.corpus == "ptb"
    for k, (char_value, word_value) in _LEVEL_DEFAULTS.items():
        if getattr(a, k) is None:
            setattr(a, k, word_value if word else char_value)


def _decode(ids, vocab, level):
    toks = [vocab[i] for i in ids]
    if level == "char":
        return "".join(toks)
    return " ".join(toks).replace(" <eos> ", "\n").replace("<eos>", "\n")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The settings that define a training run, as `pylstm train` stores them in its checkpoint, each
# with the rule its stored value must meet: --resume takes them from there.
_RUN_SETTINGS = {
    "corpus": lambda v: isinstance(v, str) and v != "",
    "level": lambda v: v in ("char", "word"),
    "max_chars": lambda v: v is None or (_is_int(v) and v >= 1),
    "wordvec": lambda v: _is_int(v) and v >= 1,
    "hidden": lambda v: _is_int(v) and v >= 1,
    "layers": lambda v: _is_int(v) and v >= 1,
    "dropout": lambda v: _is_number(v) and 0 <= v < 1,
    "tie": lambda v: isinstance(v, bool),
    "cell": lambda v: v in MODEL_CELLS,
    "epochs": lambda v: _is_int(v) and v >= 1,
    "optimizer": lambda v: v in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"),
    "lr": lambda v: _is_number(v) and v > 0,
    "clip": lambda v: _is_number(v) and v > 0,
    "clip_value": lambda v: v is None or (_is_number(v) and v > 0),
    "init": lambda v: v in ("book", "keras", "torch"),
    "batch": lambda v: _is_int(v) and v >= 1,
    "time": lambda v: _is_int(v) and v >= 1,
    "eval_interval": lambda v: _is_int(v) and v >= 1,
    "seed": _is_int,
}
# Settings a resumed run may change on purpose (it says so): training for more epochs.
_RESUME_OVERRIDES = ("epochs",)


def _explicit_options(argv) -> set:
    """The train options given on the command line (their dest names)."""
    given = set()
    for action in _build_parser().train_parser._actions:
        for opt in action.option_strings:
            if any(tok == opt or tok.startswith(opt + "=") for tok in argv):
                given.add(action.dest)
    return given


def _apply_stored_settings(a, ckpt: str, explicit: set) -> None:
    """--resume: the run continues as it was started. Settings not given take the stored values;
    a given one that contradicts the stored value is an error, except a new --epochs, which is
    said out loud. Checkpoints from before the settings were stored keep the given ones."""
    from .checkpoint import CheckpointError

    stored = _checkpoint_extra(ckpt).get("settings")
    if stored is None:
        return
    if not isinstance(stored, dict):
        raise CheckpointError(f"{ckpt}: metadata settings must be a mapping, got {type(stored).__name__}")
    for key, valid in _RUN_SETTINGS.items():
        if key not in stored:
            continue
        value = stored[key]
        if not valid(value):
            raise CheckpointError(f"{ckpt}: metadata settings {key} = {value!r} is not a valid "
                                  f"--{key.replace('_', '-')}")
        given = getattr(a, key)
        if key == "corpus" and given not in ("embedded", "ptb") and given is not None:
            given = os.path.abspath(given)
        if key in explicit and given != value:
            if key in _RESUME_OVERRIDES:
                print(f"--resume: continuing to --{key} {given} (the run was started for {value})")
                continue
            raise ValueError(f"--{key.replace('_', '-')} {getattr(a, key)} contradicts the run being resumed "
                             f"({value}): drop it to continue the run as it was started, or start a new run "
                             "(--overwrite or another --out)")
        setattr(a, key, value)


def _start_ranks(a):
    """(dist, say): the DataParallel of an MPI run (None for one process) and the print of this
    rank (rank 0's prints; the others' are dropped)."""
    from .distributed import MPI_INSTALL_HINT, DataParallel, mpi_launched

    launched = mpi_launched()
    if not (a.distributed or launched > 1):
        return None, print
    try:
        dist = DataParallel()
    except ImportError:
        how = f"started by mpiexec with {launched} processes" if launched > 1 else "--distributed"
        raise ValueError(f"{how}: {MPI_INSTALL_HINT}") from None
    return dist, (print if dist.rank == 0 else (lambda *args, **kwargs: None))


def _threads_per_rank(dist) -> int:
    """The cores this process may use, shared out among the ranks of its host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // dist.local_size)


def _cmd_train(a):
    dist, say = _start_ranks(a)
    if dist is None:
        return _train(a, None, print)
    # Start-up errors (arguments, files, corpus, devices) are collected from every rank and
    # reported once by rank 0, and every rank returns 1: no rank is left waiting and nothing is
    # aborted. (_setup_train holds no collective: one rank failing early cannot strand the rest.)
    try:
        setup, err = _setup_train(a, dist, say), None
    except Exception as exc:  # noqa: BLE001  (any of them must reach the gather below)
        setup, err = None, f"{exc}" if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
    errors = dist.comm.allgather(err)
    if any(errors):
        if dist.rank == 0:
            for msg in dict.fromkeys(e for e in errors if e):
                ranks = [r for r, e in enumerate(errors) if e == msg]
                where = "every rank" if len(ranks) == dist.size else f"rank(s) {ranks}"
                print(f"pylstm train: error ({where}): {msg}", file=sys.stderr)
        return 1
    # From here a failure on one rank ends the job (RnnlmTrainer's abort_on_error).
    try:
        return _run_train(a, dist, say, *setup)
    except Exception as exc:  # noqa: BLE001  (after fit: evaluation, plot, sample)
        if dist.size > 1:
            dist.abort(exc, prefix="pylstm train")
        raise


def _train(a, dist, say):
    return _run_train(a, dist, say, *_setup_train(a, dist, say))


def _setup_train(a, dist, say):
    import pylstm

    from .models import LstmLM
    from .optimizers import OPTIMIZERS
    from .trainer import RnnlmTrainer

    ckpt = os.path.join(a.out, "checkpoint.npz")
    if a.resume and a.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run in --out, or replace it")
    if os.path.exists(ckpt) and not (a.resume or a.overwrite):
        raise ValueError(f"--out: {a.out} already holds a run ({ckpt}); pass --resume to continue it, "
                         "--overwrite to replace it, or another --out")
    if a.resume:
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        _apply_stored_settings(a, ckpt, getattr(a, "explicit", set()))
    _defaults(a)
    if a.threads:
        pylstm.set_num_threads(a.threads)
    elif dist is not None and not os.environ.get("PYLSTM_NUM_THREADS"):
        pylstm.set_num_threads(_threads_per_rank(dist))
    train, val, test, vocab, level = _load_corpus(a.corpus, a.level, a.max_chars, a.data_dir)
    V = len(vocab)
    need = a.batch * a.time + 1
    for name, part in (("train", train), ("validation", val), ("test", test)):
        if len(part) < need:
            raise ValueError(f"the {name} part of the corpus has {len(part)} tokens; --batch x --time "
                             f"needs at least {need} (use a longer corpus or smaller --batch/--time)")
    model = LstmLM(V, a.wordvec, a.hidden, num_layers=a.layers, dropout_ratio=a.dropout,
                   tie_weights=a.tie, backend=a.backend, seed=a.seed, cell=a.cell, init=a.init,
                   precision=a.precision)
    if a.cuda_graphs and a.device != "cuda":
        raise ValueError("--cuda-graphs needs --device cuda")
    if a.device != "cpu":
        if dist is not None:
            from ._devices import device_module

            device_module(a.device)  # (a clear error when there is no GPU)
            dist.use_local_gpu()  # one GPU per rank of a host
        model.to(a.device)  # before resume: the checkpoint loads into the device arrays
    if a.cuda_graphs:
        set_cuda_graphs(True)
    opt = OPTIMIZERS[a.optimizer](lr=a.lr)
    os.makedirs(a.out, exist_ok=True)
    trainer = RnnlmTrainer(model, opt, comm=dist)
    if dist is not None:
        dist.rows(a.batch, "--batch")  # (a clear error when the ranks outnumber the streams)
    if not a.resume:  # (a resumed run keeps its trained bias)
        model.init_output_bias(train)
    if a.resume:
        saved_vocab, saved_level, _, _ = _run_record(ckpt, _checkpoint_extra(ckpt))
        if saved_vocab != vocab or saved_level != level:
            raise ValueError(f"--resume: {ckpt} was trained on another vocabulary or level "
                             f"({saved_level}, {len(saved_vocab)} tokens); this run has {level}, {V} tokens")
        trainer.resume(ckpt)
        say(f"resumed from {ckpt} at epoch {trainer.current_epoch}")
    n_params = sum(p.size for p in _unique(model.params))
    say(f"pylstm {pylstm.__version__} | backend {a.backend} -> {pylstm.available_backends()[0]} | "
        f"threads {pylstm.get_num_threads()}" + ("" if dist is None else " per rank"))
    if dist is not None:
        r0, r1 = dist.rows(a.batch)
        say(f"distributed: {dist.size} rank{'s' if dist.size > 1 else ''} (MPI: "
            f"{dist.MPI.Get_library_version().splitlines()[0].strip()}), rank 0 takes streams {r0}..{r1 - 1} "
            f"of {a.batch}; gradients averaged by an allreduce of {4 * n_params / 1e6:.2f} MB per step")
    say(f"corpus {a.corpus} ({level} level): train {len(train)}, val {len(val)}, test {len(test)} tokens, "
          f"vocabulary {V}")
    say(f"model: {a.layers} x {a.cell.upper()}(D={a.wordvec}, H={a.hidden}), {n_params} parameters | {a.optimizer} "
          f"lr {a.lr} | clip {a.clip}" + (f" (value {a.clip_value})" if a.clip_value else "") +
          f" | init {a.init} | batch {a.batch} x time {a.time} | {a.epochs} epochs")
    corpus = a.corpus if a.corpus in ("embedded", "ptb") else os.path.abspath(a.corpus)
    settings = {k: getattr(a, k) for k in _RUN_SETTINGS}
    settings.update(corpus=corpus, level=level)
    trainer.meta = {"vocab": vocab, "level": level, "corpus": corpus, "max_chars": a.max_chars,
                    "settings": settings}
    if corpus not in ("embedded", "ptb"):  # eval recognizes the file by its content, wherever it is
        trainer.meta["corpus_sha256"] = _file_sha256(corpus)
    return trainer, model, ckpt, train, val, test, vocab, level


def _run_train(a, dist, say, trainer, model, ckpt, train, val, test, vocab, level):
    from .trainer import eval_perplexity

    V = len(vocab)
    if dist is not None and a.device == "cuda":  # (a collective: after the start-up error check)
        say(f"distributed: device gradients reduced by {dist._device_transport()}")
    t0 = time.time()
    try:
        trainer.fit(train[:-1], train[1:], max_epoch=a.epochs, batch_size=a.batch, time_size=a.time, max_grad=a.clip,
                    eval_interval=a.eval_interval, val_corpus=val, checkpoint=ckpt,
                    progress=not a.no_progress, max_steps=a.max_steps, max_time=a.max_time,
                    clip_value=a.clip_value)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last complete epoch's checkpoint is kept at {ckpt}" if os.path.exists(ckpt)
              else "\ninterrupted before the first epoch ended: no checkpoint written", file=sys.stderr)
        return 130
    elapsed = time.time() - t0
    if trainer.stopped_early:
        say(f"stopped by --max-steps/--max-time in epoch {trainer.current_epoch + 1} after iteration "
              f"{trainer.epoch_iter}; --resume continues from there")
    test_ppl = eval_perplexity(model, test, batch_size=min(10, a.batch), time_size=a.time, comm=dist)
    if not trainer.is_root:
        return 0
    uni = _unigram_perplexity(train, test, V)
    print(f"trained in {elapsed:.1f} s")
    print(f"held-out (test) perplexity: {test_ppl:.2f} | unigram baseline on the same split: {uni:.2f}")
    try:
        plot = trainer.plot(os.path.join(a.out, "perplexity.png"), test_ppl=test_ppl, baseline=uni)
        print(f"plot: {plot}")
    except ImportError as exc:
        print(f"plot skipped: {exc}")
    start = vocab.index("\n") if level == "char" and "\n" in vocab else (
        vocab.index("<eos>") if "<eos>" in vocab else 0)
    ids = model.generate(start, sample_size=a.sample_length, temperature=a.temperature, seed=a.seed,
                         skip_ids=[vocab.index("<unk>")] if "<unk>" in vocab else None)
    sample = _decode(ids, vocab, level)
    with open(os.path.join(a.out, "sample.txt"), "w", encoding="utf-8") as f:
        f.write(sample)
    print(f"checkpoint: {ckpt}\n--- sample (temperature {a.temperature}) ---\n{sample}\n---")
    return 0


def _unique(params):
    from .models import unique_params

    return unique_params(params, params)[0]


def _checkpoint_extra(path):
    from .checkpoint import read_checkpoint

    meta, _ = read_checkpoint(path)
    return meta.get("extra", {})


def _run_record(path, extra, vocab_size=None):
    """The record `pylstm train` keeps beside the model, every field checked for type and range
    before use (CheckpointError naming it). Returns (vocab, level, corpus, max_chars)."""
    from .checkpoint import CheckpointError

    if "vocab" not in extra:
        raise CheckpointError(f"{path}: checkpoint has no vocabulary (not written by pylstm train)")
    vocab, level = extra["vocab"], extra.get("level")
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise CheckpointError(f"{path}: metadata vocab must be a list of strings, got {type(vocab).__name__}")
    if len(set(vocab)) != len(vocab):
        raise CheckpointError(f"{path}: metadata vocab repeats tokens ({len(vocab) - len(set(vocab))} duplicates)")
    if vocab_size is not None and len(vocab) != vocab_size:
        raise CheckpointError(f"{path}: metadata vocab has {len(vocab)} tokens, the model's vocabulary {vocab_size}")
    if not isinstance(level, str) or level not in ("char", "word"):
        raise CheckpointError(f"{path}: metadata level must be 'char' or 'word', got {level!r}")
    corpus = extra.get("corpus", "embedded")  # (absent in files from before it was recorded)
    if not isinstance(corpus, str) or not corpus:
        raise CheckpointError(f"{path}: metadata corpus must be 'embedded', 'ptb' or a file path, got {corpus!r}")
    max_chars = extra.get("max_chars")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise CheckpointError(f"{path}: metadata max_chars must be None or an integer >= 1, got {max_chars!r}")
    return vocab, level, corpus, max_chars


def _load(path):
    """The model of a `pylstm train` checkpoint and its checked record (see _run_record)."""
    from .models import load_checkpoint

    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint: no such file {path!r}")
    model, extra = load_checkpoint(path)
    return model, _run_record(path, extra, model.config["vocab_size"])


def _cmd_generate(a):
    model, (vocab, level, _, _) = _load(a.checkpoint)
    w2i = {w: i for i, w in enumerate(vocab)}
    if a.prompt is None:
        prompt = ["\n"] if level == "char" and "\n" in w2i else (["<eos>"] if "<eos>" in w2i else [vocab[0]])
    else:
        prompt = list(a.prompt) if level == "char" else a.prompt.split()
        if not prompt:
            raise ValueError("--prompt must hold at least one token (leave it out for the default start)")
    missing = [t for t in prompt if t not in w2i]
    if missing:
        raise ValueError(f"--prompt: {len(missing)} token(s) not in the model's vocabulary: "
                         + ", ".join(repr(t) for t in missing[:5]))
    if a.top_k is not None and a.top_k > len(vocab):
        raise ValueError(f"--top-k must be <= the vocabulary size {len(vocab)}, got {a.top_k}")
    kwargs = dict(sample_size=max(a.length, len(prompt)), temperature=a.temperature, top_k=a.top_k,
                  seed=a.seed, skip_ids=[w2i["<unk>"]] if "<unk>" in w2i else None)
    start = [w2i[t] for t in prompt]
    batch = {} if a.num_samples == 1 else {"num_samples": a.num_samples}
    if a.timing:  # one untimed token first: the thread pool and caches awake, as in a loop
        model.generate(start, **{**kwargs, "sample_size": len(start) + 1}, **batch)
    t0 = time.perf_counter()
    out = model.generate(start, **kwargs, **batch)
    if a.timing:
        new_tokens = kwargs["sample_size"] - len(start)
        seconds = time.perf_counter() - t0
        print(f"generated {new_tokens} tokens x {a.num_samples} sequence(s) in {seconds:.3f} s: "
              f"{1e3 * seconds / max(new_tokens, 1):.3f} ms per token", file=sys.stderr)
    if a.num_samples == 1:
        print(_decode(out, vocab, level))
        return 0
    rows = out
    for k, ids in enumerate(rows):
        print(f"--- sample {k + 1} of {len(rows)} ---\n{_decode(ids, vocab, level)}")
    return 0


def _cmd_eval(a):
    from .datasets import text
    from .trainer import eval_perplexity

    model, (vocab, level, trained_on, max_chars) = _load(a.checkpoint)
    from .checkpoint import read_checkpoint_extra

    trained_sha = read_checkpoint_extra(a.checkpoint).get("corpus_sha256")
    named = ("embedded", "ptb")
    if a.corpus is None:
        # A path in a checkpoint is data, not the user's choice: a corrupt or foreign file could
        # name any file or device (0 was standard input), so only the package's corpora are
        # taken from it.
        if trained_on not in named:
            raise ValueError(f"--corpus: {a.checkpoint} was trained on the text file {trained_on!r}; name it "
                             "(or another corpus) with --corpus: eval opens no file named only in a checkpoint")
        corpus = trained_on
    else:
        corpus = a.corpus
    if corpus in named:
        same = corpus == trained_on
    else:  # the training file, moved or not: its content decides (the path, for older checkpoints)
        same = (_file_sha256(corpus) == trained_sha) if isinstance(trained_sha, str) \
            else os.path.abspath(corpus) == trained_on
    if corpus == "ptb":
        from .datasets import ptb

        if trained_on != "ptb":  # PTB's ids are its own vocabulary's
            raise ValueError(f"--corpus ptb: {a.checkpoint} was trained on {trained_on!r}, not on ptb")
        data, _, _ = ptb.load_data(a.split, data_dir=a.data_dir)
    else:
        if corpus == "embedded":
            raw = text.embedded_text()
        else:
            with open(corpus, encoding="utf-8") as f:
                raw = f.read()
        v = text.Vocab(vocab, level)
        ids = v.encode(text.tokenize(raw, level))
        if same and max_chars:  # the training run's split of its corpus
            ids = ids[:max_chars]
        parts = dict(zip(("train", "val", "test"), text.split(ids)))
        data = parts[a.split]
    ppl = eval_perplexity(model, data, batch_size=a.batch, time_size=a.time)
    print(f"{a.split} perplexity: {ppl:.2f}")
    return 0


def _cmd_gradflow(a):
    from .gradflow import main_gradflow

    main_gradflow(a.steps, a.hidden, a.scales, a.out, a.seed)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark's own options, with or without a "--" first
        from .bench import main as bench_main

        rest = argv[1:]
        bench_main(rest[1:] if rest[:1] == ["--"] else rest, prog="pylstm bench")
        return 0
    parser = _build_parser()
    a = parser.parse_args(argv)
    a.explicit = _explicit_options(argv) if a.command == "train" else set()
    if a.command is None:
        parser.print_help()
        return 2
    handler = {"train": _cmd_train, "generate": _cmd_generate, "eval": _cmd_eval,
               "gradflow": _cmd_gradflow}[a.command]
    try:
        return handler(a)
    except (ValueError, FileNotFoundError, OSError, DeviceUnavailableError) as exc:
        print(f"pylstm {a.command}: error: {exc}", file=sys.stderr)
        return 1
    except FloatingPointError as exc:  # clip_grads on a NaN/inf gradient norm: training diverged
        print(f"pylstm {a.command}: error: training diverged ({exc}); try a smaller --lr or --clip",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
