"""The tesseract OCR engine: the CLI over list files of pre-processed images, in parallel.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from bench.errors import BenchError
from bench.features.config import OcrConfig
from bench.features.images import BLACK, WHITE, flatten, load_rgba_checked
from bench.features.ocr_engine import OcrEngine
from bench.features.ocr_text import is_cjk

log = logging.getLogger(__name__)

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

def _join_words(words: list[str]) -> str:
    out = ""
    for w in words:
        if out and not (is_cjk(out[-1]) and is_cjk(w[0])):
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


class TesseractEngine(OcrEngine):
    """Debian's tesseract as an :class:`bench.features.ocr_engine.OcrEngine` (reads files: its
    pre-processing writes its own temporary images)."""

    name = "tesseract"
    reads_decoded = False

    def model_id(self, config: OcrConfig) -> str:
        return f"tesseract-{ensure_tesseract(config.lang)}"

    def read_paths(self, paths: Sequence[str | os.PathLike | None], config: OcrConfig
                   ) -> list[tuple[str, float, str]]:
        return ocr_images(paths, config)
