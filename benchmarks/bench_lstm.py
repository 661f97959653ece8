"""The LSTM kernel benchmark: the code lives in pylstm/bench.py so that `pylstm bench` runs it
from an installed package; this script is the same entry point from a checkout."""

from pylstm.bench import main

if __name__ == "__main__":
    main()
