"""The ``features:`` section of an experiment config, validated once (pydantic only, no heavy
imports): :class:`FeaturesConfig` and the OCR settings :class:`OcrConfig`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: ``features.ocr.graph`` values: PP-OCRv4's graphs rewritten by bench/features/ocr_graph.py,
#: or as rapidocr ships them.
OCR_GRAPHS = ("folded", "rapidocr")
#: Image encoders by name (the classes are in :data:`bench.features.encoders.ENCODERS`).
ENCODER_NAMES = ("open-clip", "chinese-clip", "style-stats", "precomputed", "clip-checkpoint")


class OcrConfig(BaseModel):
    """How stickers are OCR'd. ``engine``: ``paddle`` (PP-OCRv4 from the rapidocr-onnxruntime
    wheel, Chinese + English, no apt step) or ``tesseract``; the fields from ``lang`` to
    ``dictionary`` are tesseract's (``symbols`` both engines'), ``det_side`` to ``graph``
    paddle's. Every field of the engine in use but ``workers``, ``batch`` and ``rec_batch`` is
    part of the cache key."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["paddle", "tesseract"] = "paddle"
    #: paddle: detect an image whose long side is over this (px) shrunk to it; smaller ones (and
    #: all, with None) at their own size, the short side at least ``det_min_side``
    det_side: int | None = Field(256, ge=32, le=2048)
    det_min_side: int = Field(192, ge=32, le=2048)
    rec_min_width: int = Field(320, ge=16, le=2048)  #: paddle: narrowest recogniser input (px)
    rec_batch: int = Field(1, ge=1, le=256)  #: paddle: text crops of equal width per model call
    #: paddle: run PP-OCRv4's graphs ``folded`` (affine blocks folded into convolutions, a
    #: quarter less CPU, see bench/features/ocr_graph.py) or as ``rapidocr`` ships them
    graph: Literal[OCR_GRAPHS] = "folded"

    lang: str = "eng"                  #: tesseract languages, e.g. "eng" or "eng+chi_sim"
    psm: Literal[3, 4, 6, 7, 11, 12, 13] = 11  #: 11 = sparse text, 6 = one text block
    frames: int = Field(1, ge=1)       #: animated images: frames read (stacked vertically)
    min_size: int = Field(256, ge=0)   #: upscale so the shorter side is at least this (px)
    max_upscale: float = Field(4.0, ge=1.0)
    max_size: int = Field(2400, ge=64)  #: downscale so the longer side is at most this (px)
    border: int = Field(16, ge=0)      #: white border added around the image (px)
    flatten: Literal["white", "black", "both"] = "both"
    min_conf: float = Field(50.0, ge=0, le=100)  #: words below this confidence are dropped
    symbols: bool = False  #: keep "words" without any letter or digit ("©", "★"; both engines)
    dictionary: bool = True            #: tesseract's word lists (False: load_*_dawg=0)
    workers: int = Field(2, ge=1)      #: parallel tesseract processes (not in the cache key)
    batch: int = Field(64, ge=1)       #: images per tesseract process (one model load each);
    #: a cache part holds batch x workers stickers (the most an interruption loses)

    @field_validator("lang")
    @classmethod
    def _lang(cls, v: str) -> str:
        parts = [p.strip() for p in v.split("+") if p.strip()]
        if not parts:
            raise ValueError("lang must name at least one tesseract language, e.g. 'eng'")
        return "+".join(parts)

    def cache_params(self) -> dict[str, Any]:
        if self.engine == "paddle":
            keep = {"engine", "det_side", "rec_min_width", "frames", "symbols", "graph"}
            if self.det_side is None:
                keep.add("det_min_side")
            return self.model_dump(include=keep)
        return self.model_dump(exclude={"workers", "batch", "det_side", "det_min_side",
                                        "rec_min_width", "rec_batch", "graph"})



class FeaturesConfig(BaseModel):
    """Which offline features to compute (the ``features:`` section of an experiment config).

    ``ocr``: True (defaults), False, or :class:`OcrConfig` fields as a dict. ``encoder``:
    "auto" (``precomputed`` if the stickers have an ``embedding`` column, else ``style-stats`` if
    they have images, else none), one of :data:`ENCODER_NAMES`, or None.
    Chinese datasets (``languages`` has "zh") are OCR'd with ``chi_sim`` unless ``ocr.lang`` is
    set. ``descriptions``: the VLM descriptions to merge when cached — "base" or an adapter id;
    None merges none. ``workers``: parallel OCR processes / image-loading threads (an
    ``ocr.workers`` overrides it for OCR). ``parallel``: how the image pipeline (decode once,
    OCR, embed; :mod:`bench.features.image_pipeline`) uses its workers — ``processes``,
    ``threads``, or ``auto`` (processes for more than one worker and at least
    ``PROCESS_MIN_IMAGES`` images to compute). ``cache_dir``: None = ``$PERSRV_BENCH_CACHE`` or the
    user cache dir.
    """

    model_config = ConfigDict(extra="forbid")

    ocr: bool | OcrConfig = True
    encoder: str | None = "auto"
    encoder_params: dict[str, Any] = Field(default_factory=dict)
    descriptions: str | None = "base"
    workers: int = Field(2, ge=1)
    parallel: Literal["auto", "threads", "processes"] = "auto"
    cache_dir: str | None = None

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str | None) -> str | None:
        if v is not None and v != "auto" and v not in ENCODER_NAMES:
            raise ValueError(f"unknown encoder {v!r}; choose one of auto, "
                             f"{', '.join(ENCODER_NAMES)} or null")
        return v

    def raw(self) -> dict[str, Any]:
        """The keys the config set, as plain data (what sweeps merge overrides into)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def ocr_config(self, languages: list[str] | None = None) -> OcrConfig | None:
        """The OCR settings to use, or None when OCR is off. Unless ``lang`` is given, a
        dataset whose languages include "zh" is read with ``chi_sim`` — on rendered captions it
        beat ``eng+chi_sim`` on Chinese (CER 0.012 vs 0.057, 60 captions; short ones like 早上好
        were read as Latin junk) and read mixed Chinese/English as well (CER 0.013 both)."""
        if self.ocr is False:
            return None
        ocr = OcrConfig() if self.ocr is True else self.ocr
        update: dict[str, Any] = {}
        if "workers" not in ocr.model_fields_set:
            update["workers"] = self.workers
        if "lang" not in ocr.model_fields_set and "zh" in (languages or []):
            update["lang"] = "chi_sim"
        return ocr.model_copy(update=update) if update else ocr


def validate_features(features: "FeaturesConfig | dict[str, Any] | None") -> FeaturesConfig:
    """A validated :class:`FeaturesConfig` from a config section (a :class:`ConfigError` names the
    bad key, e.g. ``features.ocr.psmm: unknown key``)."""
    from pydantic import ValidationError

    from bench.errors import ConfigError
    if isinstance(features, FeaturesConfig):
        return features
    try:
        return FeaturesConfig.model_validate(features or {})
    except ValidationError as exc:
        # ``ocr: {psmm: 6}`` fails both union branches (bool, OcrConfig): name the deepest,
        # an unknown key first, without pydantic's branch tags in the key
        errors = sorted(exc.errors(), key=lambda e: (e["type"] != "extra_forbidden",
                                                     -len(e["loc"])))
        err = errors[0]
        loc = ".".join(str(p) for p in err["loc"] if not is_union_tag(p))
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "extra_forbidden":
            from bench.errors import closest
            model = OcrConfig if "ocr" in err["loc"][:1] else FeaturesConfig
            close = closest(err["loc"][-1], model.model_fields)
            what += f" (did you mean {close!r}?)" if close else ""
        raise ConfigError(f"features.{loc}: {what}") from None


def is_union_tag(part: Any) -> bool:
    """A pydantic error-location entry naming a union branch (``bool``, ``OcrConfig``)."""
    return isinstance(part, str) and (part in ("bool", "int", "float", "str", "none")
                                      or part[:1].isupper() or "[" in part
                                      or part.startswith("function-"))
