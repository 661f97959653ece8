"""Optimizers with the book's update rules: ``update(params, grads)`` changes params in place.

Pass the lists from ``models.unique_params`` (the trainer does) so that a tied parameter is
updated once. State (velocities, moments) is kept per position and can be saved/restored with
``state_dict`` / ``load_state_dict`` for exact resumption.
"""

from __future__ import annotations

import numpy as np

from ._devices import array_module, to_host, to_module

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "OPTIMIZERS", "fuses_scaling",
           "update_scaled", "sgd_rows"]


def _real(v, key: str) -> float:
    """A real number's value (inf past float range), or TypeError naming the key."""
    if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "iuf":
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{key} must be a real number, got {type(v).__name__}")
    try:
        return float(v)
    except OverflowError:  # an int past float range
        return float("inf") if v > 0 else float("-inf")


class _Optimizer:
    _state_names: tuple = ()

    def __init__(self, lr):
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        self.lr = lr

    def _init_state(self, params):
        xp = array_module(params[0]) if params else np
        for name in self._state_names:
            state = getattr(self, name)
            if state is None:
                setattr(self, name, [xp.zeros_like(p) for p in params])
            elif state and array_module(state[0]) is not xp:  # the model moved (model.to)
                setattr(self, name, [to_module(a, xp) for a in state])

    def state_dict(self) -> dict:
        out = {"lr": self.lr}
        for name in self._state_names:
            state = getattr(self, name)
            if state is not None:
                for k, a in enumerate(state):
                    out[f"{name}_{k}"] = to_host(a)
        for name in ("iter",):
            if hasattr(self, name):
                out[name] = getattr(self, name)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned. Every value is checked before anything is set
        (TypeError / ValueError whose message starts with the key): lr a finite number > 0,
        the state arrays real floating point, iter an integer >= 0."""
        if "lr" not in state:
            raise ValueError("lr is missing from the state")
        lr = _real(state["lr"], "lr")
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {state['lr']}")
        slots = {}
        for name in self._state_names:
            keys = sorted((k for k in state if k.startswith(name + "_") and k[len(name) + 1:].isdigit()),
                          key=lambda k: int(k[len(name) + 1:]))
            arrays = [np.array(state[k]) for k in keys]
            for k, a in zip(keys, arrays):
                if a.dtype.kind != "f":  # complex would turn the parameters complex at the next update
                    raise TypeError(f"{k} must be a real floating-point array, got dtype {a.dtype}")
            slots[name] = arrays or None
        it = None
        if hasattr(self, "iter") and "iter" in state:
            # (saved as a float: state_dict's values go through JSON)
            it = _real(state["iter"], "iter")
            if not (np.isfinite(it) and it == int(it) and 0 <= it < 2**62):
                raise ValueError(f"iter must be an integer >= 0, got {state['iter']}")
        self.lr = lr
        for name, arrays in slots.items():
            setattr(self, name, arrays)
        if it is not None:
            self.iter = int(it)


def _kernel_pairs(params, grads) -> bool:
    """Whether the CPU kernels can update these pairs in place: NumPy arrays of one float dtype
    (float32 or float64), C-contiguous, params writable."""
    if not params or len(params) != len(grads):
        return False
    dt = params[0].dtype
    if dt not in (np.float32, np.float64):
        return False
    return all(type(p) is np.ndarray and type(g) is np.ndarray and p.dtype == dt and g.dtype == dt
               and p.flags.c_contiguous and g.flags.c_contiguous and p.flags.writeable and p.shape == g.shape
               and not np.may_share_memory(p, g)
               for p, g in zip(params, grads))


class SGD(_Optimizer):
    """p -= lr * g (lr rounded to the parameters' dtype, as NumPy does with a Python float)"""

    def update(self, params, grads, scale: float = 1.0):
        """``scale`` (clipping's factor): g taken as g * scale, rounded from double as
        ``clip_grads`` scales, in the same pass; the gradients are not changed."""
        if type(self.lr) in (int, float) and _kernel_pairs(params, grads):
            # one pass over memory, no temporary: the same bits as the expressions below
            from . import _backend

            _backend.require_cpu().sgd_update(list(params), list(grads), float(self.lr), float(scale))
            return
        for p, g in zip(params, grads):
            if scale != 1.0:
                xp = array_module(g)
                g = (g.astype(xp.float64) * scale).astype(g.dtype)
            p -= self.lr * g


def fuses_scaling(optimizer) -> bool:
    """Whether ``update_scaled`` applies clipping's factor inside the optimizer's own pass (plain
    SGD) rather than scaling the gradients first."""
    return getattr(optimizer.update, "__func__", None) is SGD.update


def sgd_rows(optimizer, W, rows, g_rows, rate: float = 1.0) -> None:
    """Plain SGD on some rows of W only: ``W[rows] -= lr * g_rows`` (g_rows times ``rate``
    first when below 1), the arithmetic of ``SGD.update`` to the bit: the update of a gradient
    that is zero outside those rows (an embedding's), without passing over the others."""
    rows_of_W = W[rows]
    optimizer.update([rows_of_W], [g_rows], scale=rate if rate < 1 else 1.0)  # (its arithmetic, whatever lr is)
    W[rows] = rows_of_W


def update_scaled(optimizer, params, grads, rate: float) -> None:
    """``optimizer.update(params, grads)`` with the gradients multiplied by ``rate`` first when it
    is below 1 (global-norm clipping's factor, ``reference.clip_rate``; in double, rounded once,
    as ``clip_grads`` scales). SGD does both in one pass and leaves the gradients as they were;
    any other optimizer gets them scaled in place."""
    if rate < 1 and fuses_scaling(optimizer):
        optimizer.update(params, grads, scale=rate)
        return
    if rate < 1:
        for g in grads:
            if array_module(g) is np:
                np.multiply(g, np.float64(rate), out=g, dtype=np.float64, casting="unsafe")
            else:
                g[...] = (g.astype(array_module(g).float64) * rate).astype(g.dtype)
    optimizer.update(params, grads)


class Momentum(_Optimizer):
    """v = momentum * v - lr * g;  p += v"""

    _state_names = ("v",)

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr)
        self.momentum, self.v = momentum, None

    def update(self, params, grads):
        self._init_state(params)
        for p, g, v in zip(params, grads, self.v):
            v *= self.momentum
            v -= self.lr * g
            p += v


class Nesterov(Momentum):
    """The book's Nesterov form: v = m*v - lr*g;  p += m*m*v - (1+m)*lr*g"""

    def update(self, params, grads):
        self._init_state(params)
        m = self.momentum
        for p, g, v in zip(params, grads, self.v):
            v *= m
            v -= self.lr * g
            p += m * m * v
            p -= (1 + m) * self.lr * g


class AdaGrad(_Optimizer):
    """h += g*g;  p -= lr * g / (sqrt(h) + 1e-7)"""

    _state_names = ("h",)

    def __init__(self, lr=0.01):
        super().__init__(lr)
        self.h = None

    def update(self, params, grads):
        self._init_state(params)
        for p, g, h in zip(params, grads, self.h):
            h += g * g
            p -= self.lr * g / (array_module(h).sqrt(h) + 1e-7)


class RMSprop(_Optimizer):
    """h = decay*h + (1-decay)*g*g;  p -= lr * g / (sqrt(h) + 1e-7)"""

    _state_names = ("h",)

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__(lr)
        self.decay_rate, self.h = decay_rate, None

    def update(self, params, grads):
        self._init_state(params)
        for p, g, h in zip(params, grads, self.h):
            h *= self.decay_rate
            h += (1 - self.decay_rate) * g * g
            p -= self.lr * g / (array_module(h).sqrt(h) + 1e-7)


class Adam(_Optimizer):
    """The book's Adam: lr_t = lr*sqrt(1-b2^t)/(1-b1^t); m += (1-b1)(g-m); v += (1-b2)(g^2-v);
    p -= lr_t * m / (sqrt(v) + 1e-7)"""

    _state_names = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__(lr)
        self.beta1, self.beta2 = beta1, beta2
        self.iter, self.m, self.v = 0, None, None

    def update(self, params, grads):
        self._init_state(params)
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2 ** self.iter) / (1.0 - self.beta1 ** self.iter)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m += (1 - self.beta1) * (g - m)
            v += (1 - self.beta2) * (g * g - v)
            p -= (lr_t * m / (array_module(v).sqrt(v) + 1e-7)).astype(p.dtype, copy=False)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "adam": Adam}
