"""Option parsers shared by commands in more than one module of the command line (click only)."""

from __future__ import annotations

import click


def parse_shard(ctx, param, value: str | None) -> tuple[int, int] | None:
    """``--shard I/N`` as ``(I, N)``, 0 <= I < N (``features``, ``describe``; the shard's
    stickers are :func:`bench.features.image_pipeline.shard_ids`)."""
    if value is None:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N (0 <= I < N), e.g. 0/4, got {value!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise click.BadParameter(f"expected I/N with 0 <= I < N, got {value!r}")
    return i, n
