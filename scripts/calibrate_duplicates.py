"""Calibrate a checkpoint's duplicate threshold on real photos and store it with the model.

Usage: python scripts/calibrate_duplicates.py --checkpoint CKPT [--images DIR]   (see --help)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duplicates.cli import calibrate_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(calibrate_main())
