"""Does the offline ``style-stats`` encoder separate art styles?

Samples ``--per-style`` random emoji from emoji-styles (the same emoji drawn in 4 styles: noto,
twemoji, openmoji, fluent-3d), embeds every image with ``style-stats`` through
``embed_stickers`` (the harness's own path), clusters the vectors with k-means (k = number of
styles) and prints the adjusted Rand index against the style labels (1 = perfect, 0 = chance).

    python benchmarks/style_stats_ari.py [--data ../shared/data/emoji-styles] [--per-style 400]

Skips (exit 0) when the data directory is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "emoji-styles"
STYLES = ("noto", "twemoji", "openmoji", "fluent-3d")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--per-style", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kmeans-seeds", type=int, default=3, help="k-means restarts averaged")
    args = ap.parse_args(argv)

    if not (args.data / "emoji.csv").is_file():
        print(f"SKIP: emoji-styles not found at {args.data} (pass --data)")
        return 0

    import numpy as np
    import pandas as pd
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from bench.features.encoders import embed_stickers, make_encoder

    emoji = pd.read_csv(args.data / "emoji.csv")
    rng = np.random.default_rng(args.seed)
    rows = []
    for style in STYLES:
        for hexcode in rng.choice(emoji["hexcode"].to_numpy(), args.per_style, replace=False):
            rows.append((f"{style}/{hexcode}", f"images/{style}/{hexcode}.png", style))
    stickers = pd.DataFrame(rows, columns=["sticker_id", "image", "gt_style"])

    encoder = make_encoder("style-stats")
    t0 = time.perf_counter()
    vectors, missing = embed_stickers(stickers, args.data, encoder, cache=None,
                                      workers=args.workers, progress=False)
    seconds = time.perf_counter() - t0
    labels = stickers["gt_style"].to_numpy()
    aris, last = [], None
    for s in range(args.kmeans_seeds):
        last = KMeans(len(STYLES), n_init=10, random_state=s).fit_predict(vectors)
        aris.append(adjusted_rand_score(labels, last))
    print(f"style-stats ({encoder.model_id}, dim {encoder.dim}): {len(stickers)} images "
          f"({args.per_style} x {len(STYLES)} styles, sample seed {args.seed}), "
          f"{missing} missing, embedded in {seconds:.1f} s "
          f"({len(stickers) / max(seconds, 1e-9):.0f} images/s, {args.workers} workers)")
    print(pd.crosstab(pd.Series(labels, name="style"), pd.Series(last, name="cluster")))
    print(f"ARI (k-means k={len(STYLES)}, mean of {len(aris)} seeds): {np.mean(aris):.3f} "
          f"(min {np.min(aris):.3f}, max {np.max(aris):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
