"""Markdown and LaTeX (booktabs) grids of report cells: best per column bold, † significance."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

ARROWS = {1: "▲", -1: "▼"}


def _best(cells: pd.DataFrame) -> set[tuple[str, str]]:
    top = cells.groupby("col")["mean"].transform("max")
    return set(map(tuple, cells.loc[np.isclose(cells["mean"], top), ["row", "col"]].to_numpy()))


def _mark(cell, tex: bool = False) -> str:
    if not cell["significant"]:
        return ""
    if tex:
        return "$^{\\dagger" + ("\\uparrow" if cell["direction"] > 0 else "\\downarrow") + "}$"
    return ARROWS.get(int(cell["direction"]), "") + "†"


def markdown_grid(cells: pd.DataFrame, rows: list[str], cols: list[str], titles: list[str],
                  row_names: dict[str, str] | None = None, ci: bool = True) -> str:
    """Markdown table: mean (bold = best in column), ▲/▼† for significant differences, CI."""
    best, idx = _best(cells), cells.set_index(["row", "col"])
    lines = ["| retriever | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        out = []
        for c in cols:
            if (r, c) not in idx.index:
                out.append("–")
                continue
            cell = idx.loc[(r, c)]
            text = f"{cell['mean']:.4f}"
            text = (f"**{text}**" if (r, c) in best else text) + _mark(cell)
            if ci:
                text += f" [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]"
            out.append(text)
        lines.append(f"| {(row_names or {}).get(r, r)} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _tex(text: str) -> str:
    return re.sub(r"([_%&#$\{\}])", r"\\\1", str(text)).replace("~", r"\textasciitilde{}")


def latex_grid(cells: pd.DataFrame, rows: list[str], cols: list[str], titles: list[str],
               caption: str, label: str) -> str:
    """A booktabs table (``\\usepackage{booktabs}``): best per column bold, † for significance."""
    best, idx = _best(cells), cells.set_index(["row", "col"])
    body = []
    for r in rows:
        vals = []
        for c in cols:
            if (r, c) not in idx.index:
                vals.append("--")
                continue
            cell = idx.loc[(r, c)]
            num = f"{cell['mean']:.4f}"
            vals.append((f"\\textbf{{{num}}}" if (r, c) in best else num) + _mark(cell, tex=True))
        body.append(f"    {_tex(r)} & " + " & ".join(vals) + r" \\")
    return "\n".join([
        "% persrv-bench report; needs \\usepackage{booktabs}",
        r"\begin{table}[t]", r"  \centering", f"  \\caption{{{caption}}}", f"  \\label{{{label}}}",
        f"  \\begin{{tabular}}{{l{'r' * len(cols)}}}", r"    \toprule",
        "    Retriever & " + " & ".join(_tex(t) for t in titles) + r" \\", r"    \midrule",
        *body, r"    \bottomrule", r"  \end{tabular}", r"\end{table}", ""])
