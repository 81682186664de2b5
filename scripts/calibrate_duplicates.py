"""Calibrate the duplicate threshold of a checkpoint: ``phonesim duplicates calibrate``."""

from duplicates.cli import main

if __name__ == "__main__":
    raise SystemExit(main("calibrate"))
