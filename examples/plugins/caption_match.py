"""A one-file retriever plugin (the README's worked example): stickers ranked by how many of the
query's words their caption holds, after the harness's own normalisation (NFKC + case folding),
so the query "good night" finds the caption "GOOD NIGHT!".

Use it without editing the project: PERSRV_BENCH_PLUGINS=examples/plugins persrv-bench run
CONFIG, with ``- {name: caption-match}`` under the config's ``retrievers:``.
"""

from __future__ import annotations

from bench.params import Configurable, RetrieverParams, param
from bench.registry import register
from bench.retrieval import Run
from bench.text import Tokenizer


@register("caption-match")
class CaptionMatch(Configurable):
    """Stickers sharing the most distinct words with the query (case-folded), caption order on ties."""

    class Params(RetrieverParams):
        field: str = param("ocr_text", description="the sticker text column to match")

    def fit(self, train):
        self.tokenize_ = Tokenizer(lowercase=True)  # "GOOD NIGHT!" -> ["good", "night"]
        texts = train.stickers[self.field].fillna("").astype(str).tolist()
        self.words_ = [set(self.tokenize_(text)) for text in texts]
        self.sticker_ids_ = train.stickers["sticker_id"].astype(str).tolist()
        return self

    def search(self, requests, k):
        run = Run(name=self.name)
        for request in requests:
            query = set(self.tokenize_(request.query))
            hits = [(sid, len(query & words)) for sid, words in zip(self.sticker_ids_, self.words_)
                    if query & words]
            hits.sort(key=lambda hit: -hit[1])  # stable: ties keep the corpus order
            run[request] = [(sid, float(score)) for sid, score in hits[:k]]
        return run
