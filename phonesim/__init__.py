"""phonesim command-line entry point (wires the embedder, index and server stages)."""
