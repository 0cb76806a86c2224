"""``report.html``: the markdown report as one self-contained page (tables as HTML, the PNGs
inlined as base64 data URIs), so it renders in MLflow's artifact viewer and in a mail."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMG_RE = re.compile(r'<img src="(?P<src>[^"]+)"')
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; }
th { background: #f6f8fa; }
td { font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fbfbfc; }
img { max-width: 100%; height: auto; }
code { background: #f6f8fa; padding: 0 3px; border-radius: 3px; }
"""


def _inline(match: re.Match, folder: Path) -> str:
    src = html.unescape(match.group("src"))
    path = folder / src
    if src.startswith(("data:", "http:", "https:")) or not path.is_file():
        return match.group(0)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    kind = "png" if path.suffix.lower() == ".png" else path.suffix.lower().lstrip(".")
    return f'<img src="data:image/{kind};base64,{data}"'


def markdown_to_html(markdown: str, folder: str | Path, title: str) -> str:
    """A full HTML page of ``markdown`` (CommonMark + tables, raw HTML escaped) whose images,
    given relative to ``folder``, are inlined as data URIs."""
    from markdown_it import MarkdownIt
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body = _IMG_RE.sub(lambda m: _inline(m, Path(folder)), body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")


def write_html(markdown_path: str | Path, out: str | Path | None = None,
               title: str | None = None) -> Path:
    """Write ``report.html`` (default: beside ``markdown_path``) from that markdown file."""
    md_path = Path(markdown_path)
    out = Path(out) if out is not None else md_path.with_suffix(".html")
    text = md_path.read_text(encoding="utf-8")
    first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")),
                 md_path.stem)
    out.write_text(markdown_to_html(text, md_path.parent, title or first), encoding="utf-8")
    return out
