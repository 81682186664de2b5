"""The built-in demo: a rendered synthetic phone catalog and the whole pipeline run on it."""
