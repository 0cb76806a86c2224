"""persrv-bench: an experiment-tracking benchmark harness for personalized sticker retrieval."""

__version__ = "0.1.0"
