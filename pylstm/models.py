"""LSTM language models in the style of DLfS2 ch. 6: ``Rnnlm`` and ``BetterRnnlm``, generalized
to any number of LSTM layers (or vanilla RNN layers, ``cell="rnn"``) and optional weight tying,
with generation and checkpoints.

Parameter order is the book's, so the book's trained weight files load position by position:
``[embed_W, (Wx, Wh, b) per layer, affine_W, affine_b]``; with tying, ``affine_W`` is
``embed_W.T`` (a view: the same memory, updated once).
"""

from __future__ import annotations

import os
import pickle
from typing import Iterable, Optional, Sequence

import numpy as np

from ._devices import array_module, device_module, to_host, to_module
from .checkpoint import CheckpointError, checkpoint_extra, read_checkpoint, read_checkpoint_extra, write_checkpoint
from .init import SCHEMES, glorot_uniform, init_recurrent
from .layers import (
    TimeAffine,
    TimeDropout,
    TimeEmbedding,
    TimeGRU,
    TimeLSTM,
    TimePeepholeLSTM,
    TimeRNN,
    TimeSoftmaxWithLoss,
    softmax,
)

__all__ = ["LstmLM", "Rnnlm", "BetterRnnlm", "unique_params", "load_checkpoint", "CheckpointError",
           "read_checkpoint_extra"]

def _tied_to(p: np.ndarray, q: np.ndarray) -> bool:
    """True if p is q's transpose view (how tying is built here): identity of memory, not values.
    (By address, not by ``p.base is q``: a view of an array that views other memory, such as a
    shared-memory window, has that memory's first array as its base.)"""
    if p is q or p.shape != q.T.shape or p.strides != q.T.strides or type(p) is not type(q):
        return False
    if p.base is q:
        return True
    if isinstance(p, np.ndarray):
        return p.size > 0 and p.__array_interface__["data"][0] == q.__array_interface__["data"][0]
    return p.size > 0 and p.data.ptr == q.data.ptr  # (CuPy)


def unique_params(params: Sequence[np.ndarray], grads: Sequence[np.ndarray]):
    """Merges tied parameters by identity: an array that appears again (the same object, or its
    transpose view) keeps its first position and the gradients are summed. Returns new lists."""
    out_p, out_g = [], []
    for p, g in zip(params, grads):
        for k, q in enumerate(out_p):
            if p is q:
                out_g[k] = out_g[k] + g
                break
            if _tied_to(p, q):
                out_g[k] = array_module(g).ascontiguousarray(out_g[k] + g.T)
                break
        else:
            out_p.append(p)
            out_g.append(g)
    return out_p, out_g


def _number(v, name: str, what: str) -> float:
    """v as a float (inf past float range), or TypeError naming it when v is not a real number."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {what}, got {type(v).__name__}")
    try:
        return float(v)
    except OverflowError:  # an int past float range
        return float("inf") if v > 0 else float("-inf")


def _check_dropout_ratio(ratio) -> float:
    if not 0.0 <= _number(ratio, "dropout_ratio", "a number in [0, 1)") < 1.0:  # NaN fails too
        raise ValueError(f"dropout_ratio must be in [0, 1), got {ratio}")
    return float(ratio)


_F32_MAX = float(np.finfo(np.float32).max)

# The recurrent cells a model can stack: gate blocks per layer (the RNN's nonlinearity follows),
# and the shape of each layer's extra parameter: the peepholes' P (3, H), the GRU's b_hn (H,).
MODEL_CELLS = {"lstm": 4, "peephole": 4, "gru": 3, "rnn": 1, "rnn_relu": 1}
_UNIT_PARAMS = {"peephole": 3, "gru": 1}


def _extra_shape(cell: str, H: int) -> Optional[tuple]:
    K = _UNIT_PARAMS.get(cell, 0)
    return None if K == 0 else (H,) if K == 1 else (K, H)


def _torch_converters():
    from . import convert

    return {"lstm": (convert.to_torch, convert.from_torch, "torch.nn.LSTM"),
            "gru": (convert.gru_to_torch, convert.gru_from_torch, "torch.nn.GRU"),
            "rnn": (convert.rnn_to_torch, convert.rnn_from_torch, "torch.nn.RNN"),
            "rnn_relu": (convert.rnn_to_torch, convert.rnn_from_torch, "torch.nn.RNN")}


def _check_cell(cell) -> str:
    if not isinstance(cell, str) or cell not in MODEL_CELLS:
        raise ValueError(f"cell must be one of {sorted(MODEL_CELLS)}, got {cell!r}")
    return cell


def _recurrent_layer(cell, params, backend):
    if cell == "lstm":
        return TimeLSTM(*params, stateful=True, backend=backend)
    if cell == "peephole":
        return TimePeepholeLSTM(*params, stateful=True, backend=backend)
    if cell == "gru":  # the reset_after GRU (PyTorch's), its b_hn last
        return TimeGRU(*params[:3], stateful=True, b_hn=params[3], backend=backend)
    return TimeRNN(*params, stateful=True, nonlinearity="relu" if cell == "rnn_relu" else "tanh",
                   backend=backend)


def _token_ids(ids, name: str, xp):
    """ids as an integer array of shape (N, T), or an error naming the argument (an internal
    tensor's name would only confuse)."""
    ids = xp.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"{name} must be a (N, T) batch of token ids, got shape {tuple(ids.shape)}"
                         + (" (one sequence: pass ids[None])" if ids.ndim == 1 else ""))
    return ids


def _layer_state(layer) -> tuple:
    """A recurrent layer's carried state: (h, c) for the LSTM, (h, None) for the RNN."""
    return layer.h, getattr(layer, "c", None)


def _set_layer_state(layer, h, c) -> None:
    layer.h = h
    if isinstance(layer, TimeLSTM):
        layer.c = c


def _check_init(init):
    """A scheme of pylstm.init ('book', 'keras', 'torch'), or a uniform bound a > 0 that float32
    weights can hold (uniform(-inf, inf) is an OverflowError, a NaN bound gives NaN weights)."""
    if isinstance(init, str):
        if init not in SCHEMES:
            raise ValueError(f"init must be one of {SCHEMES} or a number a > 0 (uniform(-a, a)), got {init!r}")
        return init
    if not 0.0 < _number(init, "init", "'book', 'keras', 'torch' or a number a > 0") <= _F32_MAX:
        raise ValueError(f"init must be one of {SCHEMES} or a number in (0, {_F32_MAX:.4g}] (uniform(-a, a)), "
                         f"got {init}")
    return init


class LstmLM:
    """Embedding -> [dropout] -> (LSTM -> [dropout]) x num_layers -> Affine -> softmax loss.

    Parameters
    ----------
    vocab_size, wordvec_size, hidden_size : V, D, H.
    num_layers : recurrent layers (>= 1).
    cell : "lstm" (default), "peephole" (LSTM with peepholes; ``P`` per layer, zeros under the
           book's init, so training starts from the plain LSTM), "gru" (the reset-after GRU of
           PyTorch and cuDNN; ``b_hn`` per layer), or "rnn" / "rnn_relu" for vanilla RNN layers
           (tanh / relu).
    dropout_ratio : dropout before the first LSTM and after each, in [0, 1) (0 disables).
    tie_weights : use ``embed_W.T`` as the output projection (needs D == H).
    backend : LSTM backend, "auto" | "cpu" | "numpy".
    seed : initialization and dropout seed (None: fresh randomness).
    init : "book" (the book's scaled normal init), "keras" or "torch" (those libraries' defaults
           for every layer: ``pylstm.init``), or a float a > 0: uniform(-a, a) everywhere
           (Zaremba et al.).
    precision : "fp32", or "bf16": the recurrent layers' and the output layer's GEMMs take their
           operands rounded to bfloat16 (``pylstm.lstm_forward``; CPUs with AVX512-BF16). A run
           setting (``set_precision``), not part of the parameters: a checkpoint saved at one
           precision loads and resumes at either.
    """

    def __init__(self, vocab_size=10000, wordvec_size=100, hidden_size=100, num_layers=1,
                 dropout_ratio=0.0, tie_weights=False, backend="auto", seed=None, init="book",
                 cell="lstm", precision="fp32"):
        V, D, H = int(vocab_size), int(wordvec_size), int(hidden_size)
        for name, v in (("vocab_size", V), ("wordvec_size", D), ("hidden_size", H), ("num_layers", num_layers)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if tie_weights and D != H:
            raise ValueError(f"tie_weights needs wordvec_size == hidden_size, got {D} and {H}")
        dropout_ratio = _check_dropout_ratio(dropout_ratio)  # -1 or NaN would disable it quietly
        init = _check_init(init)
        cell = _check_cell(cell)
        G, K = MODEL_CELLS[cell], _UNIT_PARAMS.get(cell, 0)
        self.config = dict(vocab_size=V, wordvec_size=D, hidden_size=H, num_layers=int(num_layers),
                           dropout_ratio=float(dropout_ratio), tie_weights=bool(tie_weights),
                           init=init, cell=cell)
        rng = np.random.default_rng(seed)
        f32 = np.float32
        affine_b = np.zeros(V, f32)
        if isinstance(init, str):
            # the embedding and the output layer as each tradition starts them (the book: N(0, 0.01^2)
            # and N(0, 1/H); Keras: uniform(-0.05, 0.05) and glorot_uniform; PyTorch: nn.Embedding's
            # N(0, 1) and nn.Linear's uniform(-1/sqrt(H), 1/sqrt(H)), bias too)
            if init == "book":
                embed_W = (rng.standard_normal((V, D)) * 0.01).astype(f32)
            elif init == "keras":
                embed_W = rng.uniform(-0.05, 0.05, (V, D)).astype(f32)
            else:
                embed_W = rng.standard_normal((V, D)).astype(f32)
            lstm_params = [init_recurrent(cell, D if layer == 0 else H, H, init, rng) for layer in range(num_layers)]
            affine_W = None
            if not tie_weights:
                if init == "book":
                    affine_W = (rng.standard_normal((H, V)) * (1 / np.sqrt(H))).astype(f32)
                elif init == "keras":
                    affine_W = glorot_uniform((H, V), rng).astype(f32)
                else:
                    affine_W = rng.uniform(-1 / np.sqrt(H), 1 / np.sqrt(H), (H, V)).astype(f32)
            if init == "torch":
                affine_b = rng.uniform(-1 / np.sqrt(H), 1 / np.sqrt(H), V).astype(f32)
        else:
            a = float(init)

            def un(*shape):
                return rng.uniform(-a, a, shape).astype(f32)
            embed_W = un(V, D)
            lstm_params = [[un(D if layer == 0 else H, G * H), un(H, G * H), un(G * H)]
                           + ([un(*_extra_shape(cell, H))] if K else []) for layer in range(num_layers)]
            affine_W = None if tie_weights else un(H, V)
        if tie_weights:
            affine_W = embed_W.T

        drop_rng = np.random.default_rng(rng.integers(2**63))
        self.layers = [TimeEmbedding(embed_W)]
        self.drop_layers = []
        if dropout_ratio > 0:
            self.layers.append(TimeDropout(dropout_ratio, drop_rng))
        self.lstm_layers = []
        for params in lstm_params:
            lstm = _recurrent_layer(cell, params, backend)
            self.layers.append(lstm)
            self.lstm_layers.append(lstm)
            if dropout_ratio > 0:
                self.layers.append(TimeDropout(dropout_ratio, drop_rng))
        self.layers.append(TimeAffine(affine_W, affine_b, backend=backend))
        self.drop_layers = [layer for layer in self.layers if isinstance(layer, TimeDropout)]
        self.loss_layer = TimeSoftmaxWithLoss(backend=backend)
        self.device = "cpu"
        self.backend = backend
        self.precision = "fp32"
        self.set_precision(precision)
        self._collect()

    def set_precision(self, precision: str) -> None:
        """The GEMMs' operand precision from the next call on: "fp32" or "bf16" (the recurrent
        layers and the output layer; the embedding, the loss and the optimizer stay float32)."""
        if not isinstance(precision, str) or precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be one of ('fp32', 'bf16'), got {precision!r}")
        self._check_precision(precision, getattr(self, "device", "cpu"))
        for layer in self.lstm_layers + [self.layers[-1]]:
            layer.precision = precision
        self.precision = precision

    def _check_precision(self, precision: str, device: str) -> None:
        """bf16 on the CPU kernels needs AVX512-BF16 (on the GPU, cuBLAS's bfloat16 GEMMs)."""
        if precision == "bf16" and device == "cpu" and self.backend in ("auto", "cpu"):
            from . import _backend

            if not _backend.require_cpu()._has_avx512_bf16():
                raise RuntimeError("precision='bf16' needs a CPU with AVX512-BF16 (the avx512_bf16 flag in "
                                   "/proc/cpuinfo), which this CPU lacks: use precision='fp32'")

    def _collect(self) -> None:
        self.params, self.grads = [], []
        for layer in self.layers:
            self.params += layer.params
            self.grads += layer.grads

    # --- devices ------------------------------------------------------------------------
    def to(self, device: str) -> "LstmLM":
        """Move the model to "cuda" (CuPy arrays; the LSTM runs on pylstm's CUDA kernels) or
        back to "cpu" (NumPy). Parameters are copied once, tying is kept (the output projection
        is again a view of the new embedding), gradients are re-created, LSTM states move with
        the model. Optimizer state follows on the optimizer's next update. Returns self."""
        xp = device_module(device)
        self._check_precision(self.precision, device)  # (a bf16 model back on a CPU without it)
        self._map_params(lambda p: to_module(p, xp))
        for layer in self.lstm_layers:
            h, c = _layer_state(layer)
            _set_layer_state(layer, to_module(h, xp), to_module(c, xp))
            layer.cache = None
        self.device = device
        return self

    def _map_params(self, fn) -> None:
        """Every parameter replaced by fn(parameter), once per array: a repeated array and a
        tied transposed view stay tied to the new one; gradients re-created as zeros."""
        new = []
        for i, p in enumerate(self.params):
            for j in range(i):
                if p is self.params[j]:
                    new.append(new[j])
                    break
                if _tied_to(p, self.params[j]):
                    new.append(new[j].T)
                    break
            else:
                new.append(fn(p))
        k = 0
        for layer in self.layers:
            n = len(layer.params)
            layer.params[:] = new[k:k + n]
            layer.grads[:] = [array_module(q).zeros_like(q) for q in layer.params]
            k += n
        self._collect()

    def init_output_bias(self, corpus) -> None:
        """Set the output layer's bias to the log unigram frequencies of ``corpus`` (token ids;
        add-one smoothed), the usual start for a softmax over a vocabulary. With a zero bias, the
        classes a short run rarely or never sees as targets keep drawing Adam's full-size steps on
        their output weights, and the model can fall into states where those classes win (a
        character model trained briefly sampled ``$ Z 3 X`` and its validation perplexity varied
        severalfold with the evaluation batch size; benchmarks/RESULTS.md)."""
        V = self.config["vocab_size"]
        ids = np.asarray(to_host(corpus)).ravel()
        if ids.dtype.kind not in "iu" or (ids.size and (ids.min() < 0 or ids.max() >= V)):
            raise ValueError(f"corpus must hold token ids in [0, {V})")
        counts = np.bincount(ids, minlength=V).astype(np.float64) + 1.0
        b = self.params[-1]
        b[...] = to_module(np.log(counts / counts.sum()).astype(np.float32), array_module(b))

    # --- the book's interface -------------------------------------------------------------
    def predict(self, xs: np.ndarray, train_flg: bool = False) -> np.ndarray:
        """Scores (N, T, V) for a (N, T) batch of token ids (a nested list works too)."""
        xs = _token_ids(xs, "xs", array_module(self.params[0]))
        for layer in self.drop_layers:
            layer.train_flg = train_flg
        for layer in self.layers:
            xs = layer.forward(xs)
        return xs

    def forward(self, xs: np.ndarray, ts: np.ndarray, train_flg: bool = True) -> float:
        """Mean loss of a (N, T) batch of ids xs against the targets ts (same shape)."""
        xp = array_module(self.params[0])
        xs, ts = _token_ids(xs, "xs", xp), _token_ids(ts, "ts", xp)
        if ts.shape != xs.shape:
            raise ValueError(f"ts must have the shape of xs {tuple(xs.shape)}, got {tuple(ts.shape)}")
        score = self.predict(xs, train_flg)
        self.loss_layer.need_grad = train_flg
        return self.loss_layer.forward(score, ts)

    def backward(self, dout: float = 1.0):
        dout = self.loss_layer.backward(dout)
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def reset_state(self) -> None:
        for layer in self.lstm_layers:
            layer.reset_state()

    # --- generation ---------------------------------------------------------------------
    def generate(self, start_id, skip_ids: Optional[Iterable[int]] = None, sample_size: int = 100,
                 temperature: float = 1.0, top_k: Optional[int] = None, seed=None,
                 num_samples: Optional[int] = None) -> list:
        """Sample ids. ``start_id`` is an id or a list of ids (a prompt, fed first); returns the
        prompt followed by sampled ids, ``sample_size`` ids in all. ``skip_ids`` are never
        sampled. The training state of the LSTM layers is saved and restored around the call.

        ``num_samples``: that many sequences sampled at once, as one batch through the model
        (one LSTM step per token for all of them); returns a list of ``num_samples`` lists. Each
        row draws with one uniform number per step (inverse CDF of its own distribution)."""
        V = self.config["vocab_size"]
        if num_samples is not None:
            if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
                raise ValueError(f"num_samples must be an integer >= 1 or None, got {num_samples!r}")
            self._check_batch_memory(int(num_samples), "num_samples")
        prompt = [int(start_id)] if np.ndim(start_id) == 0 else [int(i) for i in start_id]
        if not prompt:
            raise ValueError("start_id must be an id or a non-empty list of ids")
        bad = [i for i in prompt if not 0 <= i < V]
        if bad:
            raise ValueError(f"start_id: ids {bad[:5]} are outside the vocabulary [0, {V})")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and not 1 <= int(top_k) <= V:
            raise ValueError(f"top_k must be in [1, {V}], got {top_k}")
        if sample_size < len(prompt):
            raise ValueError(f"sample_size ({sample_size}) must be >= the prompt length ({len(prompt)})")
        banned = np.zeros(V, bool)
        for i in skip_ids or ():
            if 0 <= int(i) < V:
                banned[int(i)] = True
        rng = np.random.default_rng(seed)
        saved = [_layer_state(layer) for layer in self.lstm_layers]
        self.reset_state()
        try:
            if num_samples is not None:
                return self._generate_batch(prompt, int(num_samples), sample_size, temperature, top_k, banned, rng)
            ids = list(prompt)
            score = to_host(self.predict(np.array(prompt, dtype=np.int32)[None])[0, -1])
            while len(ids) < sample_size:
                logits = score.astype(np.float64) / temperature
                logits[banned] = -np.inf
                if top_k is not None:
                    kth = np.partition(logits, V - int(top_k))[V - int(top_k)]
                    logits[logits < kth] = -np.inf
                if not np.isfinite(logits).any():
                    raise ValueError("skip_ids excludes every id that could be sampled")
                p = softmax(logits[None])[0]
                nxt = int(rng.choice(V, p=p))
                ids.append(nxt)
                score = to_host(self.predict(np.array([[nxt]], dtype=np.int32))[0, -1])
            return ids
        finally:
            for layer, (h, c) in zip(self.lstm_layers, saved):
                _set_layer_state(layer, h, c)

    def _check_batch_memory(self, n: int, name: str) -> None:
        """A clear error, before anything is allocated, when n sequences at once need more
        memory than the machine has: per step the (n, V) scores in float32 and float64 twice
        (logits, probabilities), and per layer the (n, H) states."""
        V, H = self.config["vocab_size"], self.config["hidden_size"]
        need = n * (V * (4 + 8 + 8) + H * 4 * 6 * self.config["num_layers"])
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return
        if need > have:
            raise ValueError(f"{name}: {n} sequences at once need about {need / 2**30:.1f} GiB per step (the "
                             f"({n}, {V}) scores), more than this machine's {have / 2**30:.1f} GiB of memory")

    def _generate_batch(self, prompt, n, sample_size, temperature, top_k, banned, rng) -> list:
        V = self.config["vocab_size"]
        out = np.empty((n, sample_size), np.int64)
        out[:, :len(prompt)] = prompt
        score = to_host(self.predict(np.repeat(np.array(prompt, dtype=np.int32)[None], n, axis=0))[:, -1])
        for k in range(len(prompt), sample_size):
            logits = score.astype(np.float64) / temperature
            logits[:, banned] = -np.inf
            if top_k is not None:
                kth = np.partition(logits, V - int(top_k), axis=1)[:, V - int(top_k)]
                logits[logits < kth[:, None]] = -np.inf
            if not np.isfinite(logits).any(axis=1).all():
                raise ValueError("skip_ids excludes every id that could be sampled")
            p = softmax(logits)
            cdf = np.cumsum(p, axis=1)
            u = rng.random(n) * cdf[:, -1]  # (scaled by the last entry: the rounding of the sum)
            nxt = (cdf <= u[:, None]).sum(axis=1)
            nxt = np.minimum(nxt, V - 1)
            out[:, k] = nxt
            score = to_host(self.predict(nxt.astype(np.int32)[:, None])[:, -1])
        return out.tolist()

    # --- PyTorch interchange ------------------------------------------------------------
    def lstm_state_dict_torch(self) -> dict:
        """The recurrent layers as a ``torch.nn.LSTM(D, H, num_layers, batch_first=True)`` state
        dict (``torch.nn.GRU`` / ``torch.nn.RNN`` for a GRU / RNN model; NumPy arrays: wrap with
        ``torch.from_numpy``). LSTM gate blocks reordered to i, f, g, o; the bias goes to
        ``bias_ih_l{k}`` and ``bias_hh_l{k}`` is zeros (the GRU's b_hn excepted:
        ``convert.gru_to_torch``)."""
        self._require_torch_cell()
        to_torch = _torch_converters()[self.config["cell"]][0]

        out = {}
        for k, layer in enumerate(self.lstm_layers):
            host = [to_host(q) for q in layer.params]
            for name, a in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), to_torch(*host)):
                out[f"{name}_l{k}"] = a
        return out

    def load_lstm_state_dict_torch(self, state: dict) -> None:
        """Load ``torch.nn.LSTM`` weights (``torch.nn.GRU`` / ``torch.nn.RNN`` for a GRU / RNN
        model; a state dict of tensors or arrays, same sizes and layer count) into the recurrent
        layers; the two biases are summed (the GRU's b_hn excepted)."""
        self._require_torch_cell()
        _, from_torch, torch_class = _torch_converters()[self.config["cell"]]

        def arr(key):
            if key not in state:
                raise KeyError(f"state: missing {key!r} (expected a {torch_class} with "
                               f"{len(self.lstm_layers)} layer(s))")
            v = state[key]
            v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            return v

        new = []
        for k, layer in enumerate(self.lstm_layers):
            vals = from_torch(arr(f"weight_ih_l{k}"), arr(f"weight_hh_l{k}"),
                              arr(f"bias_ih_l{k}") if f"bias_ih_l{k}" in state else None,
                              arr(f"bias_hh_l{k}") if f"bias_hh_l{k}" in state else None)
            for name, p, v in zip(("Wx", "Wh", "b", "b_hn"), layer.params, vals):
                if p.shape != v.shape:
                    raise ValueError(f"state: layer {k} {name} has shape {v.shape}, this model needs {p.shape}")
            new.append(vals)
        for layer, vals in zip(self.lstm_layers, new):  # nothing is written unless all layers fit
            for p, v in zip(layer.params, vals):
                p[...] = to_module(v, array_module(p))

    def _require_torch_cell(self) -> None:
        if self.config["cell"] not in ("lstm", "gru", "rnn", "rnn_relu"):
            raise ValueError(f"cell {self.config['cell']!r} has no torch.nn counterpart (torch.nn.LSTM has "
                             "no peepholes)")

    # --- checkpoints --------------------------------------------------------------------
    def _own_params(self):
        """Positions of params that own their memory (tied views are rebuilt, not stored)."""
        own = []
        for i, p in enumerate(self.params):
            if any(p is q or _tied_to(p, q) for q in self.params[:i]):
                continue
            own.append(i)
        return own

    def save(self, path: str, extra: Optional[dict] = None) -> None:
        """Write a versioned .npz checkpoint atomically (temporary file + rename): the path holds
        either the previous file or the complete new one, never a partial write. ``extra`` maps
        names to arrays or JSON-able values stored beside the parameters."""
        arrays = {f"param_{i}": to_host(self.params[i]) for i in self._own_params()}
        write_checkpoint(path, type(self).__name__, self.config, arrays, extra)

    def save_params(self, file_name: Optional[str] = None) -> None:
        """The book's ``save_params``: the parameters as a pickled list of float16 arrays in the
        book's order (default file: ``<ClassName>.pkl``), loadable by the book's code and by
        ``load_params``. A pylstm checkpoint (``save``) keeps float32 and the config."""
        path = file_name or f"{type(self).__name__}.pkl"
        params = [to_host(p).astype(np.float16) for p in self.params]
        with open(path, "wb") as f:
            pickle.dump(params, f)

    def load_params(self, path: Optional[str] = None) -> dict:
        """Load parameters into this model (same architecture and sizes): from a pylstm
        checkpoint (``save``; returns its ``extra``), or, as the book's ``load_params`` does,
        from a ``.pkl`` list of arrays in the book's order (default file: ``<ClassName>.pkl``;
        a pickle runs code when loaded: only load files you trust; returns {})."""
        path = path or f"{type(self).__name__}.pkl"
        with open(path, "rb") as f:  # FileNotFoundError passes through as it is
            is_npz = f.read(4) == b"PK\x03\x04"
        if not is_npz:
            self.load_book_params(path)
            return {}
        meta, arrays = read_checkpoint(path)
        if meta["config"] != self.config:
            raise CheckpointError(f"{path}: checkpoint is for {meta['model']} {meta['config']}, "
                                  f"this model is {type(self).__name__} {self.config}")
        staged = []  # every array checked before any parameter is written
        for i in self._own_params():
            a = arrays.get(f"param_{i}")
            if a is None or a.shape != self.params[i].shape:
                raise CheckpointError(f"{path}: parameter {i} missing or of shape "
                                      f"{None if a is None else a.shape}, expected {self.params[i].shape}")
            if a.dtype.kind != "f":
                raise CheckpointError(f"{path}: parameter {i} has dtype {a.dtype}, expected a float dtype")
            staged.append((i, a))
        for i, a in staged:
            self.params[i][...] = to_module(a, array_module(self.params[i]))
        self.reset_state()
        return checkpoint_extra(meta, arrays)

    def load_book_params(self, path: str) -> None:
        """Load a DLfS2 ``.pkl`` weight file (a list of float16 arrays in the book's params order)."""
        try:
            with open(path, "rb") as f:
                loaded = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise CheckpointError(f"{path}: not a readable DLfS2 parameter file ({exc})") from exc
        if not isinstance(loaded, (list, tuple)) or len(loaded) != len(self.params):
            length = len(loaded) if hasattr(loaded, "__len__") else "?"
            raise CheckpointError(f"{path}: expected a list of {len(self.params)} arrays in the book's "
                                  f"order, got {type(loaded).__name__} of length {length}")
        for i, (p, a) in enumerate(zip(self.params, loaded)):
            a = np.asarray(a)
            if a.shape != p.shape:
                raise CheckpointError(f"{path}: array {i} has shape {a.shape}, expected {p.shape}")
            p[...] = to_module(a.astype(p.dtype), array_module(p))
        self.reset_state()


_CONFIG_KEYS = {"vocab_size": int, "wordvec_size": int, "hidden_size": int, "num_layers": int,
                "dropout_ratio": (int, float), "tie_weights": bool, "init": (str, int, float), "cell": str}


def _check_config(path: str, config: dict, arrays: dict) -> None:
    """The config must be what LstmLM takes, and describe exactly the parameters the file holds
    (checked before the model is built: a corrupt size would otherwise allocate first)."""
    if set(config) != set(_CONFIG_KEYS):
        raise CheckpointError(f"{path}: config keys {sorted(config)}, expected {sorted(_CONFIG_KEYS)}")
    for k, types in _CONFIG_KEYS.items():
        v = config[k]
        if not isinstance(v, types) or (types is int and isinstance(v, bool)):
            raise CheckpointError(f"{path}: config {k} = {v!r} has the wrong type")
    for k, check in (("dropout_ratio", _check_dropout_ratio), ("init", _check_init), ("cell", _check_cell)):
        try:
            check(config[k])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: config {k} = {config[k]!r} ({exc})") from exc
    V, D, H, L = (config[k] for k in ("vocab_size", "wordvec_size", "hidden_size", "num_layers"))
    if min(V, D, H, L) < 1:
        raise CheckpointError(f"{path}: config sizes must be >= 1, got {V, D, H, L}")
    want = V * D + V + (0 if config["tie_weights"] else H * V)
    G, K = MODEL_CELLS[config["cell"]], _UNIT_PARAMS.get(config["cell"], 0)
    want += D * G * H + (L - 1) * H * G * H + L * (H * G * H + G * H + K * H)  # closed form: L may be huge
    have = sum(a.size for k, a in arrays.items() if k.startswith("param_"))
    if want != have:
        raise CheckpointError(f"{path}: config describes {want} parameters, the file holds {have}")


def load_checkpoint(path: str, backend: str = "auto"):
    """Build the model a checkpoint describes and load it. Returns (model, extra)."""
    meta, arrays = read_checkpoint(path)
    cls = {"Rnnlm": Rnnlm, "BetterRnnlm": BetterRnnlm, "LstmLM": LstmLM}.get(meta["model"])
    if cls is None:
        raise CheckpointError(f"{path}: unknown model class {meta['model']!r}")
    _check_config(path, meta["config"], arrays)
    del arrays
    model = LstmLM.__new__(cls)
    try:
        LstmLM.__init__(model, backend=backend, **meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: config {meta['config']} does not build a model ({exc})") from exc
    return model, model.load_params(path)


class Rnnlm(LstmLM):
    """DLfS2's Rnnlm: Embedding -> stateful TimeLSTM -> TimeAffine -> softmax loss."""

    def __init__(self, vocab_size=10000, wordvec_size=100, hidden_size=100, num_layers=1,
                 backend="auto", seed=None):
        super().__init__(vocab_size, wordvec_size, hidden_size, num_layers=num_layers,
                         dropout_ratio=0.0, tie_weights=False, backend=backend, seed=seed)


class BetterRnnlm(LstmLM):
    """DLfS2's BetterRnnlm: two LSTM layers, dropout around them, and tied embedding/output
    weights (generalized: any number of layers, tying optional)."""

    def __init__(self, vocab_size=10000, wordvec_size=650, hidden_size=650, dropout_ratio=0.5,
                 num_layers=2, tie_weights=True, backend="auto", seed=None):
        super().__init__(vocab_size, wordvec_size, hidden_size, num_layers=num_layers,
                         dropout_ratio=dropout_ratio, tie_weights=tie_weights, backend=backend,
                         seed=seed)
