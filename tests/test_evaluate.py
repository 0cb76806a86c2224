"""bench.evaluate and the `evaluate` command: tiny TREC files, hand-computed numbers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.cli.evaluate_cmd import evaluate as evaluate_command
from bench.data.splits import Requests
from bench.errors import BenchError, DatasetError
from bench.evaluate import (evaluate_files, format_table, read_qrels, read_trec_run, read_users,
                            write_qrels, write_users)
from bench.metrics import evaluate_run
from bench.retrieval import Request, Run

RUN = """\
q1 Q0 a 1 3.0 t
q1 Q0 x 2 2.0 t
q1 Q0 b 3 1.0 t

q2 Q0 y 1 1.0 t
q2 Q0 c 2 0.5 t
q9 Q0 a 1 1.0 t
"""
QRELS = """\
q1 0 a 1
q1 0 b 1
q2 0 c 1
q3 0 d 1
q3 0 e 0
q4 0 z 0
"""
USERS = "qid\tuser_id\tquery\nq1\tu1\thello\nq2\tu1\tbye\nq3\tu2\thello\n"

# per request at k=3 — q1: hits at 1 and 3; q2: hit at 2; q3: no run lines
M_MRR_3 = {"q1": 1 + 1 / 3, "q2": 1 / 2, "q3": 0.0}


@pytest.fixture
def files(tmp_path):
    paths = {"run": tmp_path / "run.trec", "qrels": tmp_path / "qrels", "users": tmp_path / "r.tsv"}
    paths["run"].write_text(RUN)
    paths["qrels"].write_text(QRELS)
    paths["users"].write_text(USERS)
    return paths


def test_readers(files):
    assert read_trec_run(files["run"]) == {"q1": ["a", "x", "b"], "q2": ["y", "c"], "q9": ["a"]}
    assert read_qrels(files["qrels"]) == {"q1": {"a", "b"}, "q2": {"c"}, "q3": {"d"}}
    assert read_users(files["users"]) == {"q1": "u1", "q2": "u1", "q3": "u2"}


def test_run_sorted_by_score_then_rank(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q Q0 low 1 0.1 t\nq Q0 high 2 0.9 t\nq Q0 tie2 4 0.5 t\nq Q0 tie1 3 0.5 t\n")
    assert read_trec_run(path) == {"q": ["high", "tie1", "tie2", "low"]}


def test_evaluate_files_with_users(files):
    res = evaluate_files(files["run"], files["qrels"], files["users"], ks=(1, 3))
    assert res["n_requests"] == 3 and res["n_users"] == 2
    assert res["n_run_only"] == 1 and res["n_without_run"] == 1
    assert res["ks"] == [1, 3]
    m = M_MRR_3
    assert res["micro"]["m_mrr_at_3"] == pytest.approx(sum(m.values()) / 3)
    assert res["macro"]["m_mrr_at_3"] == pytest.approx(((m["q1"] + m["q2"]) / 2 + m["q3"]) / 2)
    assert res["macro"]["mrr_at_1"] == pytest.approx(((1 + 0) / 2 + 0) / 2)
    assert res["macro"]["recall_at_1"] == pytest.approx(((0.5 + 0) / 2 + 0) / 2)
    assert res["micro"]["recall_at_3"] == pytest.approx(2 / 3)
    table = format_table(res)
    assert "m_mrr" in table and "@3" in table and "requests 3, users 2" in table


def test_evaluate_files_without_users_each_query_is_a_user(files):
    res = evaluate_files(files["run"], files["qrels"], ks=(3,))
    assert res["n_users"] == 3
    assert res["macro"]["m_mrr_at_3"] == pytest.approx(sum(M_MRR_3.values()) / 3)
    assert res["macro"] == pytest.approx(res["micro"])


@pytest.mark.parametrize("line, field", [
    ("q1 Q0 a 1 3.0", None),          # 5 fields
    ("q1 Q0 a one 3.0 t", "rank"),
    ("q1 Q0 a 1 high t", "score"),
    ("q1 Q0 a 1 nan t", "score"),
])
def test_malformed_run_line_names_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "bad.trec"
    path.write_text(f"q1 Q0 x 1 1.0 t\n# comment\n{line}\n")
    with pytest.raises(DatasetError) as info:
        read_trec_run(path)
    msg = str(info.value)
    assert "bad.trec" in msg and "line 3" in msg
    assert info.value.row == 3
    if field:
        assert f"field {field!r}" in msg


def test_malformed_qrels_and_users(tmp_path):
    qrels = tmp_path / "qrels"
    qrels.write_text("q1 0 a 1\nq1 0 b yes\n")
    with pytest.raises(DatasetError, match=r"line 2, field 'rel'"):
        read_qrels(qrels)
    users = tmp_path / "users.tsv"
    users.write_text("q1\tu1\nq2 u2\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_users(users)
    users.write_text("q1\tu1\nq1\tu2\n")
    with pytest.raises(DatasetError, match="already has user"):
        read_users(users)


def test_missing_inputs_are_dataset_errors(files, tmp_path):
    with pytest.raises(DatasetError, match="missing"):
        evaluate_files(tmp_path / "nope.trec", files["qrels"])
    empty = tmp_path / "empty.qrels"
    empty.write_text("q1 0 a 0\n")
    with pytest.raises(DatasetError, match="no relevant"):
        evaluate_files(files["run"], empty)
    partial = tmp_path / "partial.tsv"
    partial.write_text("q1\tu1\n")
    with pytest.raises(DatasetError, match="no user"):
        evaluate_files(files["run"], files["qrels"], partial)


def test_written_files_evaluate_like_the_in_memory_run(tmp_path):
    r1, r2, r3 = Request("u1", "hi there"), Request("u1", "bye"), Request("u2", "hi\tthere")
    reqs = Requests([r1, r2, r3], {r1: {"b", "a"}, r2: {"c"}, r3: {"a"}})
    # equal scores: the rank field must keep the retriever's order
    run = Run({r1: [("x", 1.0), ("a", 1.0), ("b", 1.0)], r3: [("a", 2.0), ("y", 1.0)]})
    run.save_trec(tmp_path / "run.trec", reqs.qids)
    write_qrels(reqs, tmp_path / "qrels")
    write_users(reqs, tmp_path / "requests.tsv")
    assert (tmp_path / "qrels").read_text().splitlines()[:2] == ["q0 0 a 1", "q0 0 b 1"]
    assert (tmp_path / "requests.tsv").read_text().splitlines()[3] == "q2\tu2\thi there"
    res = evaluate_files(tmp_path / "run.trec", tmp_path / "qrels", tmp_path / "requests.tsv",
                         ks=(1, 2, 3))
    _, macro, micro = evaluate_run(run, reqs, ks=(1, 2, 3))
    assert res["macro"] == pytest.approx(macro)
    assert res["micro"] == pytest.approx(micro)
    assert res["macro"]["m_mrr_at_3"] == pytest.approx(((1 / 2 + 1 / 3 + 0) / 2 + 1) / 2)


def test_write_qrels_rejects_ids_with_whitespace(tmp_path):
    r = Request("u", "q")
    with pytest.raises(DatasetError, match="whitespace"):
        write_qrels(Requests([r], {r: {"has space"}}), tmp_path / "qrels")


def _invoke(args):
    return CliRunner().invoke(evaluate_command, [str(a) for a in args])


def test_cli_json(files):
    result = _invoke(["--run", files["run"], "--qrels", files["qrels"], "--users",
                      files["users"], "--k", 1, 3, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["m_mrr_at_3"] == pytest.approx(((M_MRR_3["q1"] + M_MRR_3["q2"]) / 2) / 2)
    assert out["micro"]["m_mrr_at_3"] == pytest.approx(sum(M_MRR_3.values()) / 3)
    assert {"mrr_at_1", "recall_at_3", "ndcg_at_3"} <= set(out)
    assert "m_mrr_at_10" not in out
    assert out["n_requests"] == 3 and out["n_users"] == 2 and out["n_run_only"] == 1


def test_cli_k_forms_and_table(files):
    repeated = _invoke(["--k", 1, "--k", 3, "--run", files["run"], "--qrels", files["qrels"],
                        "--json"])
    spaced = _invoke(["--run", files["run"], "--k", 3, 1, "--qrels", files["qrels"], "--json"])
    assert repeated.exit_code == 0 and spaced.exit_code == 0, spaced.output
    assert json.loads(repeated.output) == json.loads(spaced.output)
    default = _invoke(["--run", files["run"], "--qrels", files["qrels"], "--json"])
    assert json.loads(default.output)["ks"] == [1, 5, 10, 20]
    table = _invoke(["--run", files["run"], "--qrels", files["qrels"], "--k", 1, 3])
    assert table.exit_code == 0 and "ndcg" in table.output and "@3" in table.output


def test_cli_bad_input_raises_bench_error(tmp_path, files):
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 a 1\n")
    result = _invoke(["--run", bad, "--qrels", files["qrels"]])
    assert isinstance(result.exception, BenchError)
    assert "line 1" in str(result.exception)
    usage = _invoke(["--run", files["run"], "--qrels", files["qrels"], "--k", 0])
    assert usage.exit_code == 2
