"""Find duplicate listing photos in a folder or manifest, or against a catalog index.

Usage: python scripts/find_duplicates.py --checkpoint CKPT (--images DIR | --manifest CSV)
           --out REPORT_DIR [--against INDEX_DIR] [--threshold T]   (see --help)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duplicates.cli import find_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(find_main())
