"""Small text helpers shared by the OCR engines."""

from __future__ import annotations


def is_cjk(ch: str) -> bool:
    return ("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"
            or "\u3040" <= ch <= "\u30ff" or "\uac00" <= ch <= "\ud7af"
            or "\uff00" <= ch <= "\uffef" or "\u3000" <= ch <= "\u303f")
