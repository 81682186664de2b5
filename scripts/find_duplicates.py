"""Find duplicate listing photos: ``phonesim duplicates find`` (see ``--help``)."""

from duplicates.cli import main

if __name__ == "__main__":
    raise SystemExit(main("find"))
