"""Small text helpers shared by the OCR engines, and the character error rate."""

from __future__ import annotations

import unicodedata


def is_cjk(ch: str) -> bool:
    return ("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"
            or "\u3040" <= ch <= "\u30ff" or "\uac00" <= ch <= "\ud7af"
            or "\uff00" <= ch <= "\uffef" or "\u3000" <= ch <= "\u303f")


def normalise_text(text: str) -> str:
    """NFKC, lower case, whitespace collapsed to one space, no space next to a CJK character."""
    t = unicodedata.normalize("NFKC", str(text or "")).lower()
    t = " ".join(t.split())
    chars = list(t)
    kept = [c for i, c in enumerate(chars)
            if not (c == " " and ((i > 0 and is_cjk(chars[i - 1]))
                                  or (i + 1 < len(chars) and is_cjk(chars[i + 1]))))]
    return "".join(kept)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def character_error_rate(pred: str, truth: str) -> float:
    """Levenshtein(pred, truth) / len(truth) after :func:`normalise_text` (empty truth: 0 or 1)."""
    p, t = normalise_text(pred), normalise_text(truth)
    if not t:
        return 0.0 if not p else 1.0
    return levenshtein(p, t) / len(t)
