"""Export recommendation features (embeddings, probabilities, neighbours) to HDF5:
``phonesim export`` (see ``--help``)."""

from export.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
