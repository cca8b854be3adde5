"""LSTM / GRU speed against Flax NNX and PyTorch: ``gatenets bench`` as a script.

    python benchmarks/recurrent.py --repeats 7 --torch-threads 1,2 --json out.json

takes the same options as ``gatenets bench`` (see :mod:`gatenets.bench`).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gatenets.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
