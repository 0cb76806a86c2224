"""An independent check of the leave-one-query-out bm25 figures with bm25s.

    persrv-bench run experiments/sticker_queries_loqo.yaml --no-tracking      # note the folder
    python benchmarks/loqo_bm25s_check.py --csv ../shared/data/sticker-queries/sticker_queries_en_release.csv \\
        --run-folder persrv-runs/sticker-queries-loqo-<time>

Takes only the held-out requests (``requests.tsv``: qid, user, query) and their relevant sticker
(``qrels.txt``) from the run folder; everything else is rebuilt here without the harness: each
sticker's document is its CSV queries minus its held-out one, indexed with bm25s (Lucene idf,
k1 1.2, b 0.75; like the harness's `bm25` defaults no stemming and no stop words,
``--stem`` for English stop words + Snowball stemming), and MRR@20, hit@1 and hit@20 are
computed in plain Python. Prints them beside the harness's bm25 figures from ``results.csv``.
The two tokenisers differ (the harness keeps emoji and punctuation-only tokens), so agreement to
about a point is expected, not to the last decimal.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path


def split_queries(text: str) -> list[str]:
    """A sticker's queries: split on list separators, case-insensitive duplicates dropped (first
    spelling kept), as the StickerQueries release is documented to be used."""
    seen: set[str] = set()
    out = []
    for q in (q.strip() for q in re.split(r"[,，、；]", text or "")):
        if q and q.casefold() not in seen:
            seen.add(q.casefold())
            out.append(q)
    return out


def main(argv: list[str] | None = None) -> int:
    import bm25s
    import pandas as pd
    import Stemmer
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--run-folder", required=True)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--stem", action="store_true", help="English stop words + Snowball stemming")
    args = ap.parse_args(argv)
    folder = Path(args.run_folder)
    with open(args.csv, encoding="utf-8", newline="") as fh:
        queries = {row["sticker_id"]: split_queries(row["labeled_queries"])
                   for row in csv.DictReader(fh)}
    requests = pd.read_csv(folder / "requests.tsv", sep="\t")
    qrels = pd.read_csv(folder / "qrels.txt", sep=" ", header=None,
                        names=["qid", "zero", "sticker_id", "rel"])
    relevant = dict(zip(qrels["qid"], qrels["sticker_id"]))
    held_out: dict[str, set[str]] = {}
    for qid, query in zip(requests["qid"], requests["query"]):
        held_out.setdefault(relevant[qid], set()).add(str(query))
    ids = sorted(queries)
    docs = [" ".join(q for q in queries[s] if q not in held_out.get(s, set())) for s in ids]
    stemmer = Stemmer.Stemmer("english") if args.stem else None
    stop = "en" if args.stem else None
    retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    retriever.index(bm25s.tokenize(docs, stopwords=stop, stemmer=stemmer, show_progress=False),
                    show_progress=False)
    tokens = bm25s.tokenize(requests["query"].astype(str).tolist(), stopwords=stop,
                            stemmer=stemmer, show_progress=False)
    found, _ = retriever.retrieve(tokens, k=args.k, show_progress=False)
    rr, hit1, hitk = [], [], []
    for qid, row in zip(requests["qid"], found):
        ranked = [ids[i] for i in row]
        rank = ranked.index(relevant[qid]) + 1 if relevant[qid] in ranked else None
        rr.append(1.0 / rank if rank else 0.0)
        hit1.append(float(rank == 1))
        hitk.append(float(rank is not None))
    n = len(rr)
    print(f"requests: {n}, stickers: {len(ids)}")
    print(f"bm25s (independent): MRR@{args.k} {sum(rr) / n:.4f}  hit@1 {sum(hit1) / n:.4f}  "
          f"hit@{args.k} {sum(hitk) / n:.4f}")
    table = pd.read_csv(folder / "results.csv").set_index("retriever")
    if "bm25" in table.index:
        row = table.loc["bm25"]
        print(f"harness bm25:        MRR@{args.k} {row[f'mrr_at_{args.k}']:.4f}  hit@1 "
              f"{row['recall_at_1']:.4f}  hit@{args.k} {row[f'recall_at_{args.k}']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
