"""Times the installed pylstm's LSTM training step (forward + backward) and forward-only call:
medians of many back-to-back steps per shape, one JSON line. Run it alternately from the
virtual environments of two builds to compare them (the functional API only, so any build
since the API existed works): python benchmarks/ab_step.py [threads]"""

import json
import sys
import time

import numpy as np

import pylstm

SHAPES = [(20, 35, 650, 650), (64, 100, 256, 256), (1, 200, 128, 128), (8, 35, 64, 128)]


def main():
    pylstm.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    out = {}
    for N, T, D, H in SHAPES:
        rng = np.random.default_rng(0)
        xs = rng.standard_normal((N, T, D)).astype(np.float32)
        Wx = (rng.standard_normal((D, 4 * H)) / np.sqrt(D)).astype(np.float32)
        Wh = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32)
        b = np.zeros(4 * H, np.float32)
        dhs = rng.standard_normal((N, T, H)).astype(np.float32)
        # about 0.6 s of steps at ~150 GFLOP/s, between 5 and 200 of them
        reps = min(200, max(5, int(0.6 / (N * T * H * (D + H) * 24 / 150e9 + 1e-4))))
        train, infer = [], []
        for r in range(reps + 2):  # two untimed steps first
            t0 = time.perf_counter()
            _, _, _, cache = pylstm.lstm_forward(xs, Wx, Wh, b)
            pylstm.lstm_backward(dhs, cache)
            t1 = time.perf_counter()
            pylstm.lstm_inference(xs, Wx, Wh, b)
            t2 = time.perf_counter()
            if r >= 2:
                train.append(t1 - t0)
                infer.append(t2 - t1)
        out[f"{N},{T},{D},{H}"] = {"train_ms": 1e3 * float(np.median(train)),
                                   "infer_ms": 1e3 * float(np.median(infer))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
