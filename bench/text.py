"""The tokenizer shared by every BM25 in the project (baselines and PerSRV's fields).

``Tokenizer()(text) -> list[str]``; ``Tokenizer().batch(texts) -> list[list[str]]``.

Steps, in order:

1. NFKC normalisation (full-width Latin, circled digits, compatibility ideographs fold to their
   plain forms), then ``str.casefold`` when ``lowercase`` (``"Straße"`` -> ``"strasse"``).
2. Split into runs of word characters of every script: Unicode letters, digits, ``_`` and
   combining marks (so Devanagari, Thai, accented text stay whole words). Everything else
   (spaces, punctuation, symbols) separates tokens, except emoji, each kept as a token of its own:
   a ZWJ sequence (``"👨‍💻"``) or a flag (two regional indicators) is one token, skin-tone
   modifiers, variation selectors and keycap marks are dropped from it (``"👍🏽"`` -> ``"👍"``).
   A whitespace-delimited chunk of punctuation/symbols only (``":)"``, ``"!!!"``) is one token
   too, so punctuation-only queries stay searchable; punctuation attached to a word still splits.
3. Chinese (Han ideographs and Hiragana) inside a run is split off and segmented by ``chinese``:
   ``"jieba"`` (jieba's precise mode), ``"char"`` (one token per character, as Elasticsearch's
   standard analyzer splits CJK) or ``"none"`` (the whole run as one token).
4. Stopwords removed (``stopwords``: None, a language name known to bm25s such as ``"english"`` or
   ``"chinese"``, or an iterable of words; compared after step 1).
5. Snowball stemming (``stem``: None or a PyStemmer language such as ``"english"``), cached per
   distinct token.

Unlike Lucene's UAX#29 tokenizer, apostrophes and dots always split (``"don't"`` -> ``don``,
``t``; ``"3.14"`` -> ``3``, ``14``) and single-character tokens are kept.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

if TYPE_CHECKING:  # pragma: no cover (numpy is imported where the codes are built)
    import numpy as np

ChineseMode = Literal["jieba", "char", "none"]
CHINESE_MODES = ("jieba", "char", "none")

# Han ideographs (URO, Ext A, compatibility, Ext B+ in the SIP/TIP planes) and Hiragana: what
# Lucene's StandardTokenizer emits one character at a time.
_CJK = ("\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
        "\U00020000-\U0002fa1f\U00030000-\U0003134f")
# Pictographic emoji blocks, without the skin-tone modifiers U+1F3FB..U+1F3FF.
_EMOJI = ("\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001f3fa\U0001f400-\U0001f64f"
          "\U0001f680-\U0001f6ff\U0001f900-\U0001f9ff\U0001fa70-\U0001faff")
# Marks inside an emoji sequence that are dropped from its token: skin tones, VS-15/16, keycap.
_EMOJI_MODS = "\U0001f3fb-\U0001f3ff\ufe0e\ufe0f\u20e3"
_EMOJI_SEQ = (f"[\U0001f1e6-\U0001f1ff]{{2}}"  # a flag: two regional indicators
              f"|[{_EMOJI}][{_EMOJI_MODS}]*(?:\u200d[{_EMOJI}][{_EMOJI_MODS}]*)*")

_STOPWORD_SETS = {"english": "STOPWORDS_EN", "en": "STOPWORDS_EN",
                  "chinese": "STOPWORDS_CHINESE", "zh": "STOPWORDS_CHINESE",
                  "german": "STOPWORDS_GERMAN", "de": "STOPWORDS_GERMAN",
                  "french": "STOPWORDS_FRENCH", "fr": "STOPWORDS_FRENCH",
                  "spanish": "STOPWORDS_SPANISH", "es": "STOPWORDS_SPANISH"}


def _ranges(codepoints: Iterable[int]) -> str:
    """A regex character-class body for a sorted list of code points."""
    out, start, prev = [], None, None
    for c in codepoints:
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            out.append((start, prev))
            start = prev = c
    if start is not None:
        out.append((start, prev))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in out)


#: The Unicode planes holding combining marks (category M): the BMP, the SMP and plane 14's
#: variation selectors. Scanning these instead of all 1.1M code points makes the first
#: tokenizer of a process ~6x cheaper; tests check no other plane has a mark.
MARK_PLANES = (0, 1, 14)


@functools.cache
def _patterns() -> tuple[re.Pattern, re.Pattern, re.Pattern, re.Pattern]:
    """(token, has-CJK, CJK-run splitter, single CJK char) patterns; built once per process
    (~0.05 s: only the planes that hold combining marks are scanned)."""
    marks = _ranges(c for p in MARK_PLANES for c in range(p << 16, (p + 1) << 16)
                    if unicodedata.category(chr(c))[0] == "M")
    # Runs of \w, continued across combining marks (\w alone misses them: Devanagari, Thai);
    # \w+ first, as one class holding every mark range scans ~2.5x slower. Then emoji
    # sequences, then whitespace-delimited chunks with no word character and no emoji.
    token = re.compile(f"\\w+(?:[{marks}]+\\w*)*|{_EMOJI_SEQ}"
                       f"|(?<!\\S)(?:[^\\s\\w{_EMOJI}\\u200d{marks}]|[{_EMOJI_MODS}])+(?!\\S)")
    has_cjk = re.compile(f"[{_CJK}]")
    cjk_split = re.compile(f"([{_CJK}]+)")
    cjk_char = re.compile(f"[{_CJK}]")
    return token, has_cjk, cjk_split, cjk_char


@functools.cache
def _emoji_mods() -> re.Pattern:
    """Skin tones, variation selectors, keycap marks: dropped from every token."""
    return re.compile(f"[{_EMOJI_MODS}]")


def _quiet_jieba():
    import jieba
    jieba.setLogLevel(logging.WARNING)
    return jieba


def resolve_stopwords(stopwords: str | Iterable[str] | None) -> frozenset[str]:
    """A stopword set from None, a language name (bm25s's lists) or an iterable of words."""
    if stopwords is None:
        return frozenset()
    if isinstance(stopwords, str):
        attr = _STOPWORD_SETS.get(stopwords.lower())
        if attr is None:
            raise ValueError(f"unknown stopword list {stopwords!r}; use one of "
                             f"{', '.join(sorted(_STOPWORD_SETS))} or pass a list of words")
        import bm25s.stopwords
        words = getattr(bm25s.stopwords, attr)
    else:
        words = stopwords
    return frozenset(unicodedata.normalize("NFKC", w).casefold() for w in words)


class Tokenizer:
    """Unicode-aware word tokenizer with optional stemming, stopwords and Chinese segmentation.

    Parameters: ``lowercase`` (casefold), ``stem`` (PyStemmer language or None), ``chinese``
    (``"jieba"``, ``"char"`` or ``"none"``), ``stopwords`` (see :func:`resolve_stopwords`).
    Cheap to build; jieba and PyStemmer are imported on first use. Not thread-safe (caches).
    """

    def __init__(self, lowercase: bool = True, stem: str | None = None,
                 chinese: ChineseMode = "jieba",
                 stopwords: str | Iterable[str] | None = None):
        if chinese not in CHINESE_MODES:
            raise ValueError(f"chinese must be one of {', '.join(CHINESE_MODES)}, got {chinese!r}")
        self.lowercase = lowercase
        self.stem = stem
        self.chinese = chinese
        self.stopwords = stopwords
        self._stop = resolve_stopwords(stopwords)
        self._stemmer = None
        if stem is not None:
            import Stemmer
            try:
                self._stemmer = Stemmer.Stemmer(stem)
            except KeyError:
                raise ValueError(f"unknown stemmer language {stem!r}; PyStemmer knows "
                                 f"{', '.join(Stemmer.algorithms())}") from None
        self._stems: dict[str, str] = {}
        self._segments: dict[str, list[str]] = {}
        self._jieba = None

    def __repr__(self) -> str:
        return (f"Tokenizer(lowercase={self.lowercase!r}, stem={self.stem!r}, "
                f"chinese={self.chinese!r}, stopwords={self.stopwords!r})")

    # ------------------------------------------------------------------------------------ API
    def __call__(self, text: str | None) -> list[str]:
        return self.batch([text])[0]

    def batch(self, texts: Sequence[str | None]) -> list[list[str]]:
        """Tokens of each text (None or NaN count as empty). Repeated texts are tokenized once;
        every returned list is a fresh list."""
        token_re, has_cjk, _, _ = _patterns()
        norm = unicodedata.normalize
        lower = self.lowercase
        stop = self._stop
        memo: dict[str, list[str]] = {}
        out: list[list[str]] = []
        for text in texts:
            if not isinstance(text, str):  # None, NaN
                out.append([])
                continue
            toks = memo.get(text)
            if toks is not None:
                out.append(toks.copy())
                continue
            if text.isascii():  # NFKC is the identity and casefold is lower
                toks = token_re.findall(text.lower() if lower else text)
            else:
                s = norm("NFKC", text)
                if lower:
                    s = s.casefold()
                toks = token_re.findall(s)
                if _emoji_mods().search(s) is not None:
                    toks = [_emoji_mods().sub("", t) or t for t in toks]
                if has_cjk.search(s) is not None:
                    toks = self._split_cjk(toks)
            if stop:
                toks = [w for w in toks if w not in stop]
            memo[text] = toks
            out.append(toks)
        if self._stemmer is not None:
            out = self._stem_all(out)
        return out

    # ---------------------------------------------------------------------------- internals
    def _split_cjk(self, tokens: list[str]) -> list[str]:
        _, has_cjk, cjk_split, cjk_char = _patterns()
        res: list[str] = []
        for tok in tokens:
            if has_cjk.search(tok) is None:
                res.append(tok)
                continue
            for i, piece in enumerate(cjk_split.split(tok)):
                if not piece:
                    continue
                if i % 2 == 0:  # non-CJK part of the run (e.g. "abc" in "abc中文")
                    res.append(piece)
                elif self.chinese == "char":
                    res.extend(cjk_char.findall(piece))
                elif self.chinese == "none":
                    res.append(piece)
                else:
                    res.extend(self._segment(piece))
        return res

    def _segment(self, run: str) -> list[str]:
        seg = self._segments.get(run)
        if seg is None:
            if self._jieba is None:
                self._jieba = _quiet_jieba()
            seg = [w for w in self._jieba.lcut(run) if w.strip()]
            if len(self._segments) > (1 << 18):
                self._segments.clear()
            self._segments[run] = seg
        return seg

    def _stem_all(self, docs: list[list[str]]) -> list[list[str]]:
        stems = self._stems
        new = {w for doc in docs for w in doc if w not in stems}
        if new:
            new_list = list(new)
            stems.update(zip(new_list, self._stemmer.stemWords(new_list)))
        return [[stems[w] for w in doc] for doc in docs]


# ------------------------------------------------------------------ vectorised entry point

@functools.cache
def _ascii_pattern() -> re.Pattern:
    """The token pattern of :func:`_patterns` restricted to ASCII text (its mark, emoji, ZWJ
    and emoji-modifier classes hold no ASCII character): word runs, and whitespace-delimited
    chunks of other characters. ~1.7x faster; tests check both agree on random ASCII."""
    return re.compile(r"\w+|(?<!\S)[^\s\w]+(?!\S)")


def _ascii_tokens(tokenizer: "Tokenizer", texts: list[str]):
    """Tokens of ASCII texts (before stopwords and stemming) from one regex pass over the texts
    joined by a whitespace-delimited sentinel word: (tokens object array, tokens per text)."""
    import numpy as np
    token_re = _ascii_pattern()
    n = 0
    while True:  # a sentinel that no text holds as a word of its own
        sentinel = f"zq{n}sepx"
        joined = f" {sentinel} ".join(texts) + f" {sentinel}"
        tokens = np.array(token_re.findall(joined.lower() if tokenizer.lowercase else joined),
                          dtype=object)
        is_sep = tokens == sentinel
        if int(is_sep.sum()) == len(texts):
            break
        n += 1
    lengths = np.diff(np.flatnonzero(is_sep), prepend=-1) - 1
    return tokens[~is_sep], lengths


def tokenize_to_codes(tokenizer, texts: Sequence) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every text's tokens as integer codes, exactly ``tokenizer.batch(texts)`` flattened:
    (codes int64 (total tokens,), lengths int64 (len(texts),), terms list[str] with
    ``terms[code]`` the token; terms in order of first occurrence).

    For a :class:`Tokenizer` each distinct text is tokenized once, the ASCII ones in one regex
    pass over their concatenation, and stopwords/stems are applied per distinct token; any
    other callable (``batch`` used when it has one) is run per text."""
    import numpy as np
    import pandas as pd
    if not isinstance(tokenizer, Tokenizer):
        batch = getattr(tokenizer, "batch", None)
        docs = batch(list(texts)) if batch is not None else [tokenizer(t) for t in texts]
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        codes, terms = pd.factorize(pd.Series([t for d in docs for t in d], dtype=object))
        return codes.astype(np.int64), lengths, terms.tolist()
    text_of, distinct = pd.factorize(pd.Series(list(texts), dtype=object), use_na_sentinel=True)
    distinct = [t if isinstance(t, str) else None for t in distinct.tolist()]
    plain = Tokenizer(tokenizer.lowercase, None, tokenizer.chinese, None)  # no stop/stem yet
    plain._segments, plain._jieba = tokenizer._segments, tokenizer._jieba
    is_ascii = np.fromiter((t is not None and t.isascii() for t in distinct), dtype=bool,
                           count=len(distinct))
    asc = np.flatnonzero(is_ascii)
    other = np.flatnonzero(~is_ascii)
    seg_len = np.zeros(len(distinct), dtype=np.int64)
    tok_a = np.empty(0, dtype=object)
    if asc.size:
        tok_a, seg_len[asc] = _ascii_tokens(plain, [distinct[i] for i in asc])
    docs_o = plain.batch([distinct[i] for i in other]) if other.size else []
    seg_len[other] = [len(d) for d in docs_o]
    # the distinct texts' token stream, in distinct-text order
    flat = np.empty(int(seg_len.sum()), dtype=object)
    start = np.cumsum(seg_len) - seg_len
    for idx, toks in ((asc, tok_a), (other, [t for d in docs_o for t in d])):
        if len(toks):
            lens = seg_len[idx]
            flat[np.repeat(start[idx] - (np.cumsum(lens) - lens), lens)
                 + np.arange(len(toks))] = toks
    codes, terms = pd.factorize(flat)
    codes = codes.astype(np.int64)
    terms = terms.tolist() if len(flat) else []
    if tokenizer._stop:  # stopwords: drop their tokens, renumber in first-occurrence order
        stop = np.fromiter((t in tokenizer._stop for t in terms), dtype=bool, count=len(terms))
        if stop.any():
            keep = ~stop[codes]
            seg_len = np.bincount(np.repeat(np.arange(len(distinct)), seg_len)[keep],
                                  minlength=len(distinct))
            codes, kept = pd.factorize(codes[keep])
            terms = [terms[i] for i in kept.tolist()]
    if tokenizer._stemmer is not None and terms:
        stemmed = tokenizer._stem_all([terms])[0]
        remap, stems = pd.factorize(pd.Series(stemmed, dtype=object))
        codes, terms = remap[codes], stems.tolist()
    # expand distinct texts to the documents (None/NaN: no tokens)
    doc_len = np.where(text_of >= 0, seg_len[np.maximum(text_of, 0)], 0).astype(np.int64)
    start = np.cumsum(seg_len) - seg_len
    doc_start = np.where(text_of >= 0, start[np.maximum(text_of, 0)], 0)
    take = np.repeat(doc_start - (np.cumsum(doc_len) - doc_len), doc_len) + \
        np.arange(int(doc_len.sum()))
    return np.asarray(codes, dtype=np.int64)[take], doc_len, terms
