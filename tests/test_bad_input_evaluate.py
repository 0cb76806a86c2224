"""Bad input, TREC files (bench/evaluate.py): byte-order marks, empty runs: either a one-line error
that names the input (exit 2, no traceback) or the input is handled and what was skipped is
counted (issue 9; split from tests/test_bad_input.py by area in issue 25)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_main


# ------------------------------------------------------------------- TREC readers: BOM, empty

def _trec_pair(tmp_path: Path, bom: bool) -> tuple[Path, Path]:
    prefix = "\ufeff" if bom else ""
    run = tmp_path / ("bom.run" if bom else "plain.run")
    run.write_text(prefix + "q1 Q0 a 1 2.0 t\nq1 Q0 b 2 1.0 t\nq2 Q0 c 1 1.0 t\n",
                   encoding="utf-8")
    qrels = tmp_path / ("bom.qrels" if bom else "plain.qrels")
    qrels.write_text(prefix + "q1 0 a 1\nq2 0 d 1\n", encoding="utf-8")
    return run, qrels


def test_bom_in_trec_files_is_stripped_with_a_warning(tmp_path, caplog):
    from bench.evaluate import evaluate_files
    plain = evaluate_files(*_trec_pair(tmp_path, bom=False), ks=[1, 5])
    with_bom = evaluate_files(*_trec_pair(tmp_path, bom=True), ks=[1, 5])
    assert with_bom["macro"] == plain["macro"] and plain["macro"]["m_mrr_at_5"] == 0.5
    assert with_bom["n_requests"] == 2 and with_bom["n_run_only"] == 0
    assert caplog.text.count("byte-order mark (BOM); ignored") == 2


def test_empty_run_file_is_warned_about(tmp_path, capsys, caplog):
    run, qrels = _trec_pair(tmp_path, bom=False)
    run.write_text("", encoding="utf-8")
    code, out, err = run_main(capsys, "evaluate", "--run", str(run), "--qrels", str(qrels),
                              "--k", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["m_mrr_at_1"] == 0.0
    assert "holds no ranked results: every request scores 0" in caplog.text + err
