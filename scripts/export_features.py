"""Export recommendation features (embeddings, probabilities, neighbours) to HDF5.

Thin wrapper around :mod:`export.cli`; run with ``--help`` for the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
