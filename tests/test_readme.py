"""The README's numbers come from a command: its quickstart table equals a fresh run's, and every
file the README cites ships."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_readme_cites_only_files_that_ship():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "DESIGN §" not in text, "cite docs/ARCHITECTURE.md, which ships, not DESIGN.md"
    cited = set(re.findall(r"`((?:docs|experiments|sweeps|benchmarks|bench|baselines)/[\w./-]+)`",
                           text))
    assert cited, "the README cites no project file"
    missing = sorted(c for c in cited if not (ROOT / c).exists())
    assert not missing, f"README cites files that do not exist: {missing}"


def test_readme_has_the_generated_blocks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_tables
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_tables.read_block(text, "quickstart"), "the quickstart block is missing"
    for name in readme_tables.JOBS:  # every block the README carries holds a generated table
        block = readme_tables.read_block(text, name)
        assert block is None or any(head in block for head in (
            "| retriever |", "| divergence |", "| level |", "| main job |", "| stickers |",
            "| measure |", "| engine |", "| PP-OCRv4 graphs |")), name


def test_the_features_graphs_block_alternates_the_graphs(tmp_path, monkeypatch):
    """One run per graph on 10 stickers: a row per graph with its rate, CPU, CER and load."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_tables
    monkeypatch.setattr(readme_tables, "wait_for_quiet", lambda: 0.0)
    block = readme_tables.features_graphs_block(tmp_path, n=10, runs=1)
    rows = block.split("\n\n")[0].splitlines()
    assert rows[0].startswith("| PP-OCRv4 graphs | steady images/s per run | median |")
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["as rapidocr ships them", "folded"]
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 7 and cells[1] == cells[2] and float(cells[1]) > 0
        assert re.fullmatch(r"\d\.\d{3}", cells[4]) and re.fullmatch(r"\d\.\d{3}", cells[5])
    assert "--ocr-graph rapidocr|folded`, 1 runs each" in block


def test_the_ocr_engines_block_is_each_commands_own_cer_line(tmp_path, monkeypatch):
    """The block runs ``persrv-bench features`` per column and quotes its CER line (here on 6
    and 4 stickers instead of 200 and 100)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_tables
    monkeypatch.setattr(readme_tables, "OCR_COLUMNS", {
        "6 English": ["dataset.params.n_stickers=6"],
        "4 Chinese": ["dataset.params.n_stickers=4", "dataset.params.language=zh"]})
    monkeypatch.setattr(readme_tables, "wait_for_quiet", lambda: 0.0)
    block = readme_tables.ocr_engines_block(tmp_path)
    rows = block.split("\n\n")[0].splitlines()
    assert rows[0] == "| engine | 6 English | 4 Chinese |" and rows[1] == "|---|---|---|"
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[0] == "paddle" and len(cells) == 3
    assert all(re.fullmatch(r"CER \d\.\d{3}, \d+% exact, \d\.\d{3} s/image", c) for c in cells[1:])
    assert "-o dataset.params.language=zh" in block and (tmp_path / "cache1").is_dir()


def test_table_check_tolerates_float_noise_not_changes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_tables
    old = "| a | 0.5143 | +0.012 [+0.001, +0.020] |\n| b | 0.1000 | |"
    assert readme_tables.tables_match(old, old.replace("0.5143", "0.5150"))[0]
    assert not readme_tables.tables_match(old, old.replace("0.5143", "0.5243"))[0]
    assert not readme_tables.tables_match(old, old.replace("| b |", "| c |"))[0]


def test_readme_quickstart_table_equals_a_fresh_run(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_tables.py"),
                          "--check", "quickstart"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
