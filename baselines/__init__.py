"""Registered retrievers, one module each. The registry (``bench.registry``) imports every module
of this package on first lookup: adding a retriever is adding its file, nothing to list here."""
