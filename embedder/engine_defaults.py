"""Defaults of the inference engine that command-line parsers show, kept free of heavy imports
(``phonesim --help`` must not load torch or ONNX Runtime)."""

# Calibration images for the int8 graph's activation ranges: more barely moves them.
DEFAULT_CALIBRATION_IMAGES = 256
