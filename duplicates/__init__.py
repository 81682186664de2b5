"""Duplicate-listing detection: descriptor -> candidates -> verification -> groups (README.md)."""
