"""The command line's one home: ``main.py`` holds the group and the core commands, the other
modules one (lazily loaded) command family each."""

from bench.cli.main import cli, main

__all__ = ["cli", "main"]
