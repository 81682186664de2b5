"""Embedder stage: timm backbone fine-tuned as a phone classifier, L2-normalised features.

Everything here knows images and torch/timm and hands float32 numpy arrays to the rest.
"""
