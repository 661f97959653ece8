"""Generation per token: pylstm's ``model.generate`` against the equivalent PyTorch loop
(nn.Embedding + nn.LSTM + nn.Linear, the same weights, softmax in float64 and one draw per
token from the distribution, inference mode, the same thread count), side by side in one run.

Models: the book's BetterRnnlm size (V = 10000, D = H = 650, 2 layers, tied output weights)
and the default character model of ``pylstm train`` (V = 65, D = 48, H = 384, 1 layer). Each
row: median ms per token over --repeats generations of --tokens tokens (one untimed generation
first: the loop regime), for one sequence and for --num-samples sequences at once (pylstm's
``num_samples``, a batch through torch's modules), and the ratio. Before timing, the first
step's scores of both are checked to agree.

Run: python benchmarks/bench_generate.py [--tokens 100] [--repeats 5] [--num-samples 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import pylstm
from pylstm import convert
from pylstm.bench import cpu_name, git_commit, sgemm_ceiling
from pylstm.models import BetterRnnlm, LstmLM

MODELS = {
    "book BetterRnnlm (V=10000, 2 x 650, tied)": lambda: BetterRnnlm(10000, 650, 650, seed=0),
    "character model (V=65, D=48, H=384)": lambda: LstmLM(65, 48, 384, seed=0),
}


class TorchLM:
    """The PyTorch equivalent of a pylstm LstmLM, with its weights."""

    def __init__(self, model, torch):
        self.torch = torch
        embed, lstms, affine = model.layers[0], model.lstm_layers, model.layers[-1]
        V, D = embed.params[0].shape
        H = lstms[0].params[1].shape[0]
        self.embed = torch.nn.Embedding(V, D)
        self.lstm = torch.nn.LSTM(D, H, num_layers=len(lstms), batch_first=True)
        self.linear = torch.nn.Linear(H, V)
        with torch.no_grad():
            self.embed.weight.copy_(torch.from_numpy(embed.params[0]))
            for i, layer in enumerate(lstms):
                torch_params = convert.to_torch(*layer.params[:3])
                for name, v in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), torch_params):
                    getattr(self.lstm, f"{name}_l{i}").copy_(torch.from_numpy(v))
            self.linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(affine.params[0].T)))
            self.linear.bias.copy_(torch.from_numpy(affine.params[1]))

    def scores(self, ids, state):
        out, state = self.lstm(self.embed(ids), state)
        return self.linear(out[:, -1]), state

    def generate(self, start_id, sample_size, num_samples=1, seed=0):
        torch = self.torch
        gen = torch.Generator().manual_seed(seed)
        rows = [[start_id] for _ in range(num_samples)]
        with torch.inference_mode():
            ids = torch.full((num_samples, 1), start_id, dtype=torch.long)
            state = None
            while len(rows[0]) < sample_size:
                score, state = self.scores(ids, state)
                p = torch.softmax(score.double(), dim=-1)
                ids = torch.multinomial(p, 1, generator=gen)
                for r, v in zip(rows, ids[:, 0].tolist()):
                    r.append(v)
        return rows


def per_token(fn, tokens, repeats):
    fn()  # untimed: the loop regime
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / (tokens - 1))
    return 1e3 * float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=100, help="tokens per generation (default 100)")
    p.add_argument("--repeats", type=int, default=5, help="timed generations per candidate (default 5)")
    p.add_argument("--num-samples", type=int, default=8, help="sequences at once in the batched rows (default 8)")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: pylstm's)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.tokens < 2 or a.repeats < 1 or a.num_samples < 1:
        p.error("--tokens must be >= 2, --repeats and --num-samples >= 1")
    try:
        import torch
    except ImportError:
        sys.exit("bench_generate.py compares with PyTorch: pip install torch")
    if a.threads:
        pylstm.set_num_threads(a.threads)
    threads = pylstm.get_num_threads()
    torch.set_num_threads(threads)
    header = {"commit": git_commit(), "cpu": cpu_name(), "threads": threads, "torch": torch.__version__,
              "sgemm_2048_gflops": sgemm_ceiling(), "date": time.strftime("%Y-%m-%d")}
    print(f"# pylstm {pylstm.__version__} ({header['commit']}) | {header['cpu']} | {threads} threads | "
          f"sgemm 2048^3: {header['sgemm_2048_gflops']:.0f} GFLOP/s | torch {torch.__version__} | {header['date']}")
    print("| model | sequences | pylstm ms/token | torch ms/token | pylstm vs torch |")
    print("|---|---|---|---|---|")
    rows = []
    for name, make in MODELS.items():
        model = make()
        ref = TorchLM(model, torch)
        want = model.predict(np.array([[1]]))[0, -1].astype(np.float64)
        with torch.inference_mode():
            got = ref.scores(torch.tensor([[1]]), None)[0][0].double().numpy()
        err = np.abs(got - want).max() / np.abs(want).max()
        if not err < 1e-4:
            sys.exit(f"refusing to time {name}: torch's scores differ from pylstm's by {err:.1e}")
        for n in (1, a.num_samples):
            kw = {} if n == 1 else {"num_samples": n}
            ours = per_token(lambda: model.generate(1, sample_size=a.tokens, seed=0, **kw), a.tokens, a.repeats)
            theirs = per_token(lambda: ref.generate(1, a.tokens, num_samples=n), a.tokens, a.repeats)
            rows.append({"model": name, "sequences": n, "pylstm_ms_per_token": ours, "torch_ms_per_token": theirs})
            print(f"| {name} | {n} | {ours:.3f} | {theirs:.3f} | **{theirs / ours:.2f}x** |")
            sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
