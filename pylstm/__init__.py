"""pylstm: fused LSTM sequence kernels for Python, and a DLfS2-style LSTM language-model stack.

The functional API (``lstm_forward``, ``lstm_backward``, ``lstm_inference``, the same for the
peephole LSTM (``peephole_*``), the GRU (``gru_*``) and the vanilla RNN (``rnn_*``), ``clip_grads``,
``clip_grads_by_value``, ``global_norm``) runs on the compiled CPU
kernels, on the CUDA kernels for device arrays (CuPy, PyTorch, Numba; ``backend="cuda"``), or on
the NumPy reference (``pylstm.reference``), which is the specification the kernels are tested
against.
"""

from ._backend import DeviceUnavailableError, cuda_status, set_cuda_graphs
from .functional import (
    LSTMCache,
    RNNCache,
    available_backends,
    clip_grads,
    clip_grads_by_value,
    get_num_threads,
    global_norm,
    gru_backward,
    gru_forward,
    gru_inference,
    lstm_backward,
    lstm_forward,
    lstm_inference,
    matmul,
    peephole_backward,
    peephole_forward,
    peephole_inference,
    rnn_backward,
    rnn_forward,
    rnn_inference,
    set_num_threads,
    softmax_cross_entropy,
)

__version__ = "0.1.0"

__all__ = [
    "DeviceUnavailableError",
    "LSTMCache",
    "RNNCache",
    "cuda_status",
    "available_backends",
    "clip_grads",
    "clip_grads_by_value",
    "get_num_threads",
    "global_norm",
    "gru_backward",
    "gru_forward",
    "gru_inference",
    "lstm_backward",
    "lstm_forward",
    "lstm_inference",
    "matmul",
    "peephole_backward",
    "peephole_forward",
    "peephole_inference",
    "rnn_backward",
    "rnn_forward",
    "rnn_inference",
    "set_cuda_graphs",
    "set_num_threads",
    "softmax_cross_entropy",
    "__version__",
]
