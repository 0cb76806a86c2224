"""OCR of sticker captions with tesseract, cached and parallel (DESIGN §9).

Speed: pytesseract costs ~0.3 s per call (a process and a model load each time), so we call the
tesseract CLI directly, once per *list file* of many pre-processed images (one model load per
batch), with ``OMP_THREAD_LIMIT=1`` (Debian's build links OpenMP and oversubscribes otherwise), in
``workers`` parallel processes. pytesseract is only used to find the binary, its version and its
languages.

Pre-processing (each image): GIF -> first frame (``frames`` > 1: that many frames stacked
vertically, so one page holds the text of every frame); upscale so the shorter side is at least
``min_size`` px (tesseract wants ~20-30 px letters: on 60 rendered 64-110 px captions, CER 0.28
without upscaling, 0.02 with min_size 256); a white border; greyscale PGM. Words without a letter
or digit are dropped (tesseract reads drawings as "©", "@®").

Defaults (psm 11 = sparse text, words below confidence 50 dropped) were chosen on five rendered
sets of 60-100 images. psm 11 finds captions among drawings: on the project's synthetic stickers
(a textured character above a caption band) the share of caption words found went from 0.80
(psm 6) to 0.99. ``min_conf`` trades true words against junk: tesseract reads hatching as
"SSNRN"/"Ra" words of low confidence (2-3 junk words per synthetic sticker unfiltered, ~0.5 at
50, ~0.1 at 60), but chi_sim's confidences run low on correct text too (早上 at 27), so higher
thresholds lose Chinese words (clean zh captions: word recall 0.97 at 0, 0.91 at 60). Mean CER,
which punishes junk more than retrieval does: synthetic en 0.28 (psm 6, no filter) -> 0.07 (psm
11, min_conf 60); clean zh 0.01 -> 0.09. For CER reports use min_conf 60-70; for clean captions,
psm 6 with min_conf 0 reads best.

Throughput (2 shared cores, 200 rendered 128-256 px captions, half transparent so read twice):
110-130 images/s with workers=2, ~68 with workers=1, vs ~8 images/s calling pytesseract per image.

Transparency: tesseract blends alpha onto white, which erases white text on a transparent sticker.
With ``flatten="both"`` a sticker with transparent pixels is read twice: flattened onto white, and
flattened onto black then inverted (so white text becomes dark text on white). We keep the reading
with the higher *confident text mass* (sum over words of confidence x alphanumeric characters) —
not both joined, because the losing reading is usually junk ("WHITE [ExT") that would add noise
tokens to the BM25 field. Opaque images are read once.

Unreadable images (missing, zero-byte, video, truncated, ...) get empty text and are counted by
reason in the ``ocr_missing`` column (a warning says how many); they never stop the run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bench.errors import BenchError
from bench.features.config import OcrConfig
from bench.features.images import BLACK, WHITE, count_reasons, flatten, load_rgba_checked

log = logging.getLogger(__name__)

OCR_EXTRACTOR = "ocr"
#: Bump when pre-processing or text assembly changes (part of the cache key).
OCR_VERSION = 1
INSTALL_HINT = ("install it: apt-get install tesseract-ocr tesseract-ocr-chi-sim "
                "(macOS: brew install tesseract tesseract-lang; conda: conda install -c "
                "conda-forge tesseract), or set pytesseract.pytesseract.tesseract_cmd to the "
                "binary; or turn OCR off (features: {ocr: false})")


class OcrUnavailable(BenchError):
    """tesseract (or a language's data) is not installed."""


# ------------------------------------------------------------------------------ tesseract itself

def tesseract_cmd() -> str:
    import pytesseract
    return str(pytesseract.pytesseract.tesseract_cmd)


def tesseract_version() -> str:
    """The installed tesseract version; raises :class:`OcrUnavailable` naming what to install."""
    import pytesseract
    try:
        return str(pytesseract.get_tesseract_version())
    except pytesseract.TesseractNotFoundError:
        raise OcrUnavailable(f"tesseract OCR is not installed ({tesseract_cmd()!r} not found on "
                             f"PATH); {INSTALL_HINT}") from None
    except Exception as exc:
        raise OcrUnavailable(f"tesseract at {tesseract_cmd()!r} does not run ({exc}); "
                             f"{INSTALL_HINT}") from None


def tesseract_available() -> bool:
    try:
        tesseract_version()
        return True
    except OcrUnavailable:
        return False


def ensure_tesseract(lang: str) -> str:
    """Check the binary and every language of ``lang``; returns the version string."""
    import pytesseract
    version = tesseract_version()
    try:
        have = set(pytesseract.get_languages(config=""))
    except Exception:  # old tesseract without --list-langs: let the run itself fail loudly
        return version
    missing = [p for p in lang.split("+") if p not in have]
    if missing:
        pkgs = " ".join("tesseract-ocr-" + m.replace("_", "-").lower() for m in missing)
        raise OcrUnavailable(f"tesseract {version} has no data for language(s) "
                             f"{', '.join(missing)} (installed: {', '.join(sorted(have))}); "
                             f"install: apt-get install {pkgs} (or set the OCR language, "
                             "features.ocr.lang, to installed ones)")
    return version


def _run_tesseract(list_file: Path, config: OcrConfig, n_images: int) -> str:
    """One tesseract process over a list file of images; returns its TSV output."""
    cmd = [tesseract_cmd(), str(list_file), "stdout", "--psm", str(config.psm),
           "-l", config.lang]
    if not config.dictionary:
        cmd += ["-c", "load_system_dawg=0", "-c", "load_freq_dawg=0"]
    cmd.append("tsv")
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=60 + 5 * n_images)
    if proc.returncode != 0:
        raise RuntimeError(f"tesseract exited with {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-500:]}")
    return proc.stdout.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------- text assembly

def _is_cjk(ch: str) -> bool:
    return ("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"
            or "\u3040" <= ch <= "\u30ff" or "\uac00" <= ch <= "\ud7af"
            or "\uff00" <= ch <= "\uffef" or "\u3000" <= ch <= "\u303f")


def _join_words(words: list[str]) -> str:
    out = ""
    for w in words:
        if out and not (_is_cjk(out[-1]) and _is_cjk(w[0])):
            out += " "
        out += w
    return out


def parse_tsv(tsv: str, n_pages: int, min_conf: float = 0.0, symbols: bool = False
              ) -> list[tuple[str, float, float]]:
    """Per page (1-based ``page_num`` in list order): ``(text, mean word confidence, score)``.

    Words below ``min_conf`` are dropped, and so are words without a letter or digit unless
    ``symbols`` (tesseract reads drawings as "©", "@®", "~"). Lines are joined with newlines,
    words with spaces (none between CJK characters). ``score`` is the confident text mass: sum
    over kept words of conf/100 x alphanumeric characters.
    """
    pages: list[dict[tuple[int, int, int], list[str]]] = [dict() for _ in range(n_pages)]
    confs: list[list[float]] = [[] for _ in range(n_pages)]
    scores = [0.0] * n_pages
    for line in tsv.splitlines():
        cols = line.split("\t")
        if len(cols) < 12 or cols[0] != "5":
            continue
        try:
            page = int(cols[1]) - 1
            conf = float(cols[10])
        except ValueError:
            continue
        word = cols[11].strip()
        if not word or not 0 <= page < n_pages or conf < min_conf:
            continue
        if not symbols and not any(ch.isalnum() for ch in word):
            continue
        pages[page].setdefault((int(cols[2]), int(cols[3]), int(cols[4])), []).append(word)
        confs[page].append(conf)
        scores[page] += conf / 100.0 * sum(ch.isalnum() for ch in word)
    out = []
    for lines, cs, sc in zip(pages, confs, scores):
        text = "\n".join(_join_words(ws) for _, ws in sorted(lines.items()))
        out.append((text, float(np.mean(cs)) if cs else 0.0, sc))
    return out


# ---------------------------------------------------------------------------- pre-processing

def _has_transparency(img: Image.Image, min_fraction: float = 0.01) -> bool:
    alpha = np.asarray(img.getchannel("A"))
    return bool((alpha < 250).mean() >= min_fraction)


def _prepare(gray: Image.Image, config: OcrConfig) -> Image.Image:
    w, h = gray.size
    scale = 1.0
    if config.min_size and min(w, h) < config.min_size:
        scale = min(config.min_size / max(1, min(w, h)), config.max_upscale)
    if max(w, h) * scale > config.max_size:
        scale = config.max_size / max(w, h)
    if abs(scale - 1.0) > 1e-3:
        gray = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                           Image.Resampling.LANCZOS)
    if config.border:
        gray = ImageOps.expand(gray, border=config.border, fill=255)
    return gray


def preprocess(path: str | os.PathLike | None, config: OcrConfig
               ) -> tuple[list[Image.Image], str | None]:
    """The greyscale variants to read (1 or 2), or ``([], reason)`` if the image can't be loaded."""
    rgba, reason = load_rgba_checked(path, frames=config.frames)
    if rgba is None:
        return [], reason
    variants = []
    transparent = _has_transparency(rgba)
    if config.flatten in ("white", "both") or not transparent:
        variants.append(flatten(rgba, WHITE).convert("L"))
    if transparent and config.flatten in ("black", "both"):
        variants.append(ImageOps.invert(flatten(rgba, BLACK).convert("L")))
    return [_prepare(v, config) for v in variants], None


def _ocr_batch(paths: Sequence[str | None], config: OcrConfig, workdir: Path, tag: str
               ) -> list[tuple[str, float, str]]:
    """OCR images with one tesseract process: ``(text, confidence, missing reason or "")`` each."""
    files: list[str] = []
    owners: list[int] = []
    reasons: list[str] = [""] * len(paths)
    for i, path in enumerate(paths):
        variants, reason = preprocess(path, config)
        if reason is not None:
            reasons[i] = reason
            continue
        for j, v in enumerate(variants):
            f = workdir / f"{tag}-{i}-{j}.pgm"
            v.save(f)
            files.append(str(f))
            owners.append(i)
    best: list[tuple[str, float, float] | None] = [None] * len(paths)
    if files:
        list_file = workdir / f"{tag}.txt"
        list_file.write_text("\n".join(files) + "\n", encoding="utf-8")
        try:
            readings = parse_tsv(_run_tesseract(list_file, config, len(files)), len(files),
                                 config.min_conf, config.symbols)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log.warning("tesseract failed on a batch of %d images (%s); retrying one by one",
                        len(files), exc)
            readings = []
            for k, f in enumerate(files):
                one = workdir / f"{tag}-single-{k}.txt"
                one.write_text(f + "\n", encoding="utf-8")
                try:
                    readings += parse_tsv(_run_tesseract(one, config, 1), 1,
                                          config.min_conf, config.symbols)
                except (RuntimeError, subprocess.TimeoutExpired):
                    readings.append(("", 0.0, -1.0))
        for owner, reading in zip(owners, readings):
            cur = best[owner]
            if cur is None or reading[2] > cur[2]:
                best[owner] = reading
    out = []
    for i in range(len(paths)):
        b = best[i]
        if b is not None and b[2] < 0:
            reasons[i] = "ocr_failed"
        out.append((b[0] if b else "", b[1] if b else 0.0, reasons[i]))
    return out


def ocr_images(paths: Sequence[str | os.PathLike | None], config: OcrConfig | None = None
               ) -> list[tuple[str, float, str]]:
    """OCR image files (no cache): ``(text, mean confidence, missing reason or "")`` per path.

    Runs ``config.workers`` tesseract processes in parallel, each over batches of
    ``config.batch`` images.
    """
    config = config or OcrConfig()
    paths = [None if p is None else str(p) for p in paths]
    if not paths:
        return []
    n_batches = max(config.workers, -(-len(paths) // config.batch))
    size = -(-len(paths) // n_batches)
    batches = [paths[i:i + size] for i in range(0, len(paths), size)]
    with tempfile.TemporaryDirectory(prefix="persrv-ocr-") as tmp:
        work = Path(tmp)
        if config.workers <= 1 or len(batches) == 1:
            results = [_ocr_batch(b, config, work, f"b{i}") for i, b in enumerate(batches)]
        else:
            with ThreadPoolExecutor(max_workers=config.workers) as pool:
                results = list(pool.map(lambda ib: _ocr_batch(ib[1], config, work, f"b{ib[0]}"),
                                        enumerate(batches)))
    return [r for batch in results for r in batch]


# ---------------------------------------------------------------------------------- datasets

def _resolve(data: Any, root: str | os.PathLike | None, dataset_fingerprint: str | None
             ) -> tuple[pd.DataFrame, Path | None, str | None]:
    if isinstance(data, tuple):  # (stickers, root)
        data, root = data[0], (root if root is not None else data[1])
    stickers = getattr(data, "stickers", None)
    if stickers is not None:  # a bench.data.format.Dataset
        return stickers, (Path(root) if root is not None else data.root), \
            (dataset_fingerprint or data.fingerprint or None)
    return data, (Path(root) if root is not None else None), dataset_fingerprint


def image_paths(stickers: pd.DataFrame, root: Path | None) -> list[str | None]:
    """Absolute image paths of the stickers rows (None where the sticker has no image)."""
    out: list[str | None] = []
    for rel in (stickers["image"] if "image" in stickers else [None] * len(stickers)):
        if rel is None or (isinstance(rel, float) and np.isnan(rel)) or str(rel) == "":
            out.append(None)
        else:
            out.append(str(root / str(rel)) if root is not None else str(rel))
    return out


def stickers_fingerprint(stickers: pd.DataFrame, root: Path | None) -> str:
    """A content fingerprint of sticker ids and image bytes, for frames that are not a Dataset."""
    import hashlib
    h = hashlib.sha256()
    for sid, p in zip(stickers["sticker_id"].astype(str), image_paths(stickers, root)):
        h.update(sid.encode() + b"\0")
        if p is not None and os.path.isfile(p):
            h.update(hashlib.sha256(Path(p).read_bytes()).digest())
        else:
            h.update(b"<none>")
    return h.hexdigest()[:16]


def ocr_stickers(data: Any, config: OcrConfig | None = None, cache: Any = None, *,
                 root: str | os.PathLike | None = None, dataset_fingerprint: str | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """OCR every sticker: a frame ``sticker_id, ocr_text, ocr_conf, ocr_missing`` in row order.

    ``data``: a :class:`bench.data.format.Dataset`, or a stickers frame with ``root`` (the
    directory image paths are relative to; ``(stickers, root)`` works too). ``cache``: a
    :class:`FeatureCache` (None: no cache); the key is (dataset fingerprint, "ocr", config minus
    workers and batch, tesseract version), and only stickers no cached part holds are read. ``ocr_missing`` is "" or the reason the image could
    not be read (``no_image``, ``missing``, ``empty``, ``video``, ``truncated``, ...): those get
    empty text. ``frame.attrs`` holds ``missing`` (count by reason), ``computed`` (stickers OCR'd
    by this call) and ``seconds``.
    """
    config = config or OcrConfig()
    stickers, root_path, fp = _resolve(data, root, dataset_fingerprint)
    version = ensure_tesseract(config.lang)
    t0 = time.perf_counter()
    ids = stickers["sticker_id"].astype(str).tolist()
    path_of = dict(zip(ids, image_paths(stickers, root_path)))
    computed = 0

    def fn(chunk: list[str]) -> pd.DataFrame:
        nonlocal computed
        res = ocr_images([path_of[s] for s in chunk], config)
        computed += len(chunk)
        return pd.DataFrame({"sticker_id": chunk, "ocr_text": [r[0] for r in res],
                             "ocr_conf": np.array([r[1] for r in res], dtype=np.float32),
                             "ocr_missing": [r[2] for r in res]})

    if cache is None:
        parts = [fn(ids[i:i + 256]) for i in range(0, len(ids), 256)]
        out = pd.concat(parts, ignore_index=True) if parts else \
            pd.DataFrame({"sticker_id": [], "ocr_text": [], "ocr_conf": [], "ocr_missing": []})
    else:
        if fp is None:
            fp = stickers_fingerprint(stickers, root_path)
        params = {**config.cache_params(), "version": OCR_VERSION}
        model = f"tesseract-{version}"
        key = cache.key(dataset_fingerprint=fp, extractor=OCR_EXTRACTOR, params=params, model=model)
        out = cache.compute(key, ids, fn, chunk_size=config.batch * config.workers,
                            progress="OCR" if progress else None,
                            meta={"dataset_fingerprint": fp, "extractor": OCR_EXTRACTOR,
                                  "params": params, "model": model})
    out["ocr_text"] = out["ocr_text"].fillna("").astype(str)
    out["ocr_missing"] = out["ocr_missing"].fillna("").astype(str)
    missing = count_reasons(out["ocr_missing"])
    if missing:
        log.warning("OCR: %d of %d stickers have no readable image (%s); their ocr_text is empty",
                    sum(missing.values()), len(out),
                    ", ".join(f"{k}={v}" for k, v in missing.items()))
    out.attrs.update(missing=missing, computed=computed, seconds=time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------ accuracy

def normalise_text(text: str) -> str:
    """NFKC, lower case, whitespace collapsed to one space, no space next to a CJK character."""
    t = unicodedata.normalize("NFKC", str(text or "")).lower()
    t = " ".join(t.split())
    chars = list(t)
    kept = [c for i, c in enumerate(chars)
            if not (c == " " and ((i > 0 and _is_cjk(chars[i - 1]))
                                  or (i + 1 < len(chars) and _is_cjk(chars[i + 1]))))]
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


def ocr_accuracy(dataset: Any, config: OcrConfig | None = None, cache: Any = None, *,
                 truth_column: str = "gt_caption", ocr: pd.DataFrame | None = None
                 ) -> dict[str, Any]:
    """CER of OCR against a ground-truth caption column (synthetic datasets).

    Over stickers with a non-empty caption: ``cer_mean`` (per sticker), ``cer_micro`` (all edits /
    all truth characters), ``cer_median``, ``exact`` (fraction read exactly), ``n``, ``missing``.
    ``ocr``: an already computed :func:`ocr_stickers` frame (else it is computed).
    """
    stickers = dataset.stickers
    if truth_column not in stickers.columns:
        raise ValueError(f"dataset {getattr(dataset, 'name', '')!r} has no {truth_column!r} column "
                         "(OCR accuracy needs ground-truth captions, e.g. a synthetic dataset)")
    if ocr is None:
        ocr = ocr_stickers(dataset, config, cache, progress=False)
    pred = dict(zip(ocr["sticker_id"].astype(str), ocr["ocr_text"]))
    missing = dict(zip(ocr["sticker_id"].astype(str), ocr.get("ocr_missing", [""] * len(ocr))))
    cers, edits, chars, exact, n_missing = [], 0, 0, 0, 0
    for sid, truth in zip(stickers["sticker_id"].astype(str), stickers[truth_column]):
        t = normalise_text(truth if isinstance(truth, str) else "")
        if not t:
            continue
        p = normalise_text(pred.get(sid, ""))
        d = levenshtein(p, t)
        cers.append(d / len(t))
        edits += d
        chars += len(t)
        exact += int(d == 0)
        n_missing += int(bool(missing.get(sid)))
    if not cers:
        return {"n": 0, "cer_mean": float("nan"), "cer_micro": float("nan"),
                "cer_median": float("nan"), "exact": float("nan"), "missing": n_missing}
    return {"n": len(cers), "cer_mean": float(np.mean(cers)), "cer_micro": edits / chars,
            "cer_median": float(np.median(cers)), "exact": exact / len(cers),
            "missing": n_missing}

