"""Reports: bootstrap CIs, paired tests + Holm, breakdowns, files and plots, CLI, MLflow fetch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from bench.metrics import aggregate, per_request
from bench.report.build import compare_folders, report_folder
from bench.report.fetch import fetch_run
from bench.report.folder import load_folder
from bench.report.names import ReportError, RunNotFoundError
from bench.report.stats import bootstrap_ci, holm, paired_test

KS = (1, 5, 10, 20)
STYLES = ("flat", "line", "3d")
# label -> (registered name, params, chance a relevant sticker moves up one more rank)
RETRIEVERS = {
    "bm25": ("bm25", {}, 0.25),
    "bm25-copy": ("bm25", {"k1": 1.2}, None),  # identical results to bm25
    "persrv": ("persrv", {}, 0.6),
    "persrv-no-ocr": ("persrv", {"use_ocr": False}, 0.45),
}


def _ranking(relevant: list[str], quality: float, rng, depth: int = 20) -> list[str]:
    slots: list[str | None] = [None] * depth
    for sid in relevant:
        pos = int(rng.geometric(quality)) - 1
        while pos < depth and slots[pos] is not None:
            pos += 1
        if pos < depth:
            slots[pos] = sid
    return [s if s is not None else f"x{i}" for i, s in enumerate(slots)]


def make_run_folder(root: Path, n_users: int = 200, seed: int = 0, name: str = "fake-run",
                    dataset: str = "fakeds") -> Path:
    """A run folder in the runner's layout with planted differences between retrievers."""
    rng = np.random.default_rng(seed)
    folder = root / name
    users, relevant, seg_rows = {}, {}, []
    for u in range(n_users):
        user = f"u{u:03d}"
        hist = int(rng.choice([0, 3, 25]))
        for r in range(int(rng.integers(1, 4))):
            qid = f"q{u:03d}-{r}"
            users[qid] = user
            relevant[qid] = [f"s{u}-{r}-{j}" for j in range(int(rng.integers(1, 3)))]
            seg_rows.append({"qid": qid, "user_id": user, "query": f"query {r}",
                             "history_clicks": hist,
                             "segment": "cold" if hist == 0 else
                             ("light" if hist < 10 else "heavy"),
                             "language": "zh" if rng.random() < 0.3 else "en",
                             "gt_style": STYLES[u % 3], "gt_pack": f"pack{int(rng.integers(12))}"})
    folder.mkdir(parents=True)
    pd.DataFrame(seg_rows).to_parquet(folder / "segments.parquet", index=False)
    (folder / "requests.tsv").write_text("".join(f"{q}\t{u}\n" for q, u in users.items()))
    table = []
    base_rankings = None
    for i, (label, (rname, params, quality)) in enumerate(RETRIEVERS.items()):
        r_rng = np.random.default_rng(100 + i)
        rankings = base_rankings if quality is None else \
            {q: _ranking(rel, quality, r_rng) for q, rel in relevant.items()}
        base_rankings = base_rankings or rankings
        df = per_request(rankings, relevant, users, KS)
        sub = folder / "retrievers" / label
        sub.mkdir(parents=True)
        df.to_parquet(sub / "per_request.parquet", index=False)
        (sub / "run.trec").write_text("".join(f"{q} Q0 {d} {j + 1} {20 - j} {label}\n"
                                              for q, ranking in rankings.items()
                                              for j, d in enumerate(ranking)))
        table.append({"retriever": label, **aggregate(df, "macro"), "fit_s": 0.1,
                      "search_s": 0.2, "status": "ok"})
    pd.DataFrame(table).to_csv(folder / "results.csv", index=False)
    (folder / "results.md").write_text(f"# {name} on {dataset} (test split, macro over users)\n\n"
                                       "| table |\n\nUsers are simulated (DESIGN §4).\n")
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "name": name, "seed": seed, "dataset": {"builder": "synthetic", "params": {}},
        "retrievers": [{"name": n, "label": lb, "params": p}
                       for lb, (n, p, _) in RETRIEVERS.items()],
        "ks": list(KS), "baseline": None}))
    centers = np.eye(8)[:3] * 4.0  # three well separated style clusters
    hist_rows = []
    for u, n in (("u000", 30), ("u001", 8), ("u002", 2)):
        for j in range(n):
            s = j % 3
            emb = centers[s] + rng.normal(0, 0.3, 8)
            hist_rows.append({"user_id": u, "sticker_id": f"h{u}-{j}", "gt_style": STYLES[s],
                              "embedding": emb.astype("float32").tolist()})
    pd.DataFrame(hist_rows).to_parquet(folder / "history_sample.parquet", index=False)
    (folder / "plots").mkdir()
    Image.new("RGB", (8, 8), "white").save(folder / "plots" / "m_mrr_at_k.png")
    return folder


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return make_run_folder(tmp_path_factory.mktemp("runs"))


# ------------------------------------------------------------------------------------ (a) tests

@pytest.mark.parametrize("test", ["permutation", "t-test"])
def test_paired_test_flags_planted_difference_not_identical(test):
    rng = np.random.default_rng(1)
    a = rng.beta(0.7, 2.0, 200)
    planted = a + 0.1 + rng.normal(0, 0.05, 200)
    p = paired_test(np.c_[a, a], np.c_[planted, a], test=test, n_perm=10000, seed=0)
    assert p[0] < 1e-3
    assert p[1] == 1.0
    assert paired_test(a, a, test=test) == 1.0
    assert paired_test(a, a + 0.05, test=test) < 1e-3  # constant shift: decided by the mean
    if test == "permutation":
        assert p[0] == pytest.approx(1 / 10001)  # no flip reaches the planted mean


def test_permutation_agrees_with_t_test_on_noise():
    rng = np.random.default_rng(2)
    a = rng.random(300)
    b = a + rng.normal(0.02, 0.2, 300)
    p_perm = paired_test(a, b, "permutation", n_perm=20000, seed=3)
    p_t = paired_test(a, b, "t-test")
    assert 0.01 < p_t < 0.99
    assert p_perm == pytest.approx(p_t, abs=0.02)
    assert paired_test(a, b, "permutation", n_perm=20000, seed=3) == p_perm  # seeded


def test_unknown_test_is_an_error():
    with pytest.raises(ReportError, match="t-test"):
        paired_test([1.0], [2.0], test="wilcoxon")


def test_holm_matches_hand_computation_and_is_monotone():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max(0.06, 0.04)=0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = holm([0.2, np.nan, 0.01])  # NaN is not a comparison: m = 2
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.2) and out[2] == pytest.approx(0.02)
    p = np.random.default_rng(0).random(50) ** 3
    adj = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= p) and np.all(adj <= 1)


# ------------------------------------------------------------------------------------ (b) bootstrap

def test_bootstrap_ci_covers_true_mean_at_nominal_rate():
    a, b = 0.7, 2.0  # skewed, like per-user reciprocal ranks
    truth = a / (a + b)
    rng = np.random.default_rng(123)
    covered = 0
    for i in range(200):
        low, high = bootstrap_ci(rng.beta(a, b, 100), n_boot=500, seed=i)
        covered += low <= truth <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_bootstrap_ci_is_seeded_and_vectorised_over_columns():
    x = np.random.default_rng(0).random((150, 3))
    low, high = bootstrap_ci(x, n_boot=400, seed=7)
    assert low.shape == (3,) and np.all(low < x.mean(0)) and np.all(x.mean(0) < high)
    low2, high2 = bootstrap_ci(x, n_boot=400, seed=7)
    np.testing.assert_array_equal(low, low2)
    one = bootstrap_ci(x[:, 1], n_boot=400, seed=7)
    assert one == pytest.approx((low[1], high[1]))


# ------------------------------------------------------------------------------------ (c) report

def test_report_folder_writes_tables_and_plots(run_folder, tmp_path):
    written = report_folder(run_folder, out=tmp_path / "rep", n_boot=500)
    for name in ("report.md", "summary.md", "summary.csv", "significance.csv", "segments.csv",
                 "summary.tex", "m_mrr_curves.png", "ablation.png", "user_clusters.png"):
        assert written[name].is_file() and written[name].stat().st_size > 0, name
    for name in ("m_mrr_curves.png", "ablation.png", "user_clusters.png"):
        with Image.open(written[name]) as img:
            img.verify()
        with Image.open(written[name]) as img:
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100

    summary = pd.read_csv(written["summary.csv"]).set_index("retriever")
    results = pd.read_csv(run_folder / "results.csv").set_index("retriever")
    for col in ("m_mrr_at_1", "m_mrr_at_20", "ndcg_at_20", "recall_at_20", "mrr_at_20"):
        np.testing.assert_allclose(summary[col], results.loc[summary.index, col])  # runner's macro
        assert (summary[f"{col}_ci_low"] <= summary[col]).all()
        assert (summary[col] <= summary[f"{col}_ci_high"]).all()
    assert summary.loc["bm25", "baseline"] and summary["n_users"].eq(200).all()

    sig = pd.read_csv(written["significance.csv"])
    base = sig[sig["family"] == "baseline"].set_index(["retriever", "metric"])
    assert set(base["baseline"]) == {"bm25"} and len(base) == 3 * 7  # 3 retrievers x 7 metrics
    assert base.loc[("persrv", "m_mrr_at_20"), "significant"]
    assert base.loc[("persrv", "m_mrr_at_20"), "direction"] == 1
    assert (base.loc["bm25-copy", "p_value"] == 1.0).all()
    assert not base.loc["bm25-copy", "significant"].any()
    assert (base["p_holm"] >= base["p_value"]).all()
    abl = sig[sig["family"] == "ablation"]
    assert list(abl["retriever"]) == ["persrv-no-ocr"] and set(abl["baseline"]) == {"persrv"}
    assert abl["direction"].iloc[0] == -1

    seg = pd.read_csv(written["segments.csv"])
    assert set(seg["dimension"]) == {"segment", "language", "gt_style", "gt_pack"}
    n_requests = len(pd.read_parquet(run_folder / "segments.parquet"))
    one = seg[seg["retriever"] == "persrv"]
    for dim in ("segment", "language", "gt_style"):
        assert one.loc[one["dimension"] == dim, "n_requests"].sum() == n_requests
    assert list(one.loc[one["dimension"] == "segment", "group"]) == ["cold", "light", "heavy"]
    assert (one["dimension"] == "gt_pack").sum() == 10  # top 10 of 12 packs
    # macro within a group, by hand
    pr = pd.read_parquet(run_folder / "retrievers" / "persrv" / "per_request.parquet")
    segs = pd.read_parquet(run_folder / "segments.parquet")
    heavy = pr[pr["qid"].isin(segs.loc[segs["segment"] == "heavy", "qid"])]
    row = one[(one["dimension"] == "segment") & (one["group"] == "heavy")].iloc[0]
    by_hand = heavy.groupby("user_id")["m_mrr_at_20"].mean().mean()
    assert row["m_mrr_at_20"] == pytest.approx(by_hand)
    assert row["n_users"] == heavy["user_id"].nunique()

    md = written["report.md"].read_text()
    assert "Users are simulated" in md and "bm25 (baseline)" in md and "▲†" in md
    assert "Holm-Bonferroni" in md and "### By history segment" in md and "top 10 of 12" in md
    tex = written["summary.tex"].read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf{" in tex
    assert r"$^{\dagger\uparrow}$" in tex and r"persrv-no-ocr" in tex
    assert tex.count(r"\\") == 1 + len(RETRIEVERS)  # header + one row per retriever


def test_report_folder_t_test_baseline_and_metrics(run_folder, tmp_path):
    written = report_folder(run_folder, baseline="persrv", out=tmp_path / "t", n_boot=200,
                            test="t-test", metrics=["m_mrr_at_5", "ndcg"])
    sig = pd.read_csv(written["significance.csv"])
    base = sig[sig["family"] == "baseline"]
    assert set(base["metric"]) == {"m_mrr_at_5", "ndcg_at_20"} and set(base["test"]) == {"t-test"}
    bm25 = base[(base["retriever"] == "bm25") & (base["metric"] == "m_mrr_at_5")].iloc[0]
    assert bm25["significant"] and bm25["direction"] == -1
    assert "paired t-test" in written["summary.md"].read_text()
    with pytest.raises(ReportError, match="baseline 'nope'"):
        report_folder(run_folder, baseline="nope", out=tmp_path / "x")
    with pytest.raises(ReportError, match="unknown metric"):
        report_folder(run_folder, metrics=["map_at_10"], out=tmp_path / "x")
    with pytest.raises(ReportError, match="no retrievers"):
        load_folder(tmp_path)


def test_report_folder_minimal_folder(run_folder, tmp_path):
    """One retriever, no config, segments or history: tables still written, optional plots not."""
    folder = tmp_path / "minimal"
    (folder / "retrievers" / "bm25").mkdir(parents=True)
    pr = pd.read_parquet(run_folder / "retrievers" / "bm25" / "per_request.parquet")
    pr.to_parquet(folder / "retrievers" / "bm25" / "per_request.parquet")
    (folder / "retrievers" / "broken").mkdir()  # a failed retriever: no per_request.parquet
    written = report_folder(folder, n_boot=100)
    assert "ablation.png" not in written and "user_clusters.png" not in written
    assert written["m_mrr_curves.png"].stat().st_size > 0
    assert pd.read_csv(written["segments.csv"]).empty
    md = written["report.md"].read_text()
    assert "nothing to compare" in md and "No results (failed): broken" in md
    assert "simulated" not in md


def test_compare_folders(run_folder, tmp_path):
    other = make_run_folder(tmp_path, n_users=80, seed=5, name="other-run", dataset="otherds")
    written = compare_folders([run_folder, other], tmp_path / "cmp", n_boot=200)
    table = pd.read_csv(written["compare.csv"])
    assert set(table["dataset"]) == {"fakeds", "otherds"}
    assert set(table["metric"]) == {"m_mrr_at_20"}
    assert len(table) == 2 * len(RETRIEVERS)
    md = written["compare.md"].read_text()
    assert "| retriever | fakeds | otherds |" in md
    assert r"\begin{tabular}{lrr}" in written["compare.tex"].read_text()


# ------------------------------------------------------------------------------------ (d) CLI

def test_cli_report_on_folders(run_folder, tmp_path):
    from bench.cli import cli
    res = CliRunner().invoke(cli, ["report", str(run_folder), "--out", str(tmp_path / "one"),
                                   "--no-log"])
    assert res.exit_code == 0, res.output
    assert "| retriever | M-MRR@1 |" in res.output and "bm25 (baseline)" in res.output
    assert (tmp_path / "one" / "report.md").is_file()
    other = make_run_folder(tmp_path, n_users=60, seed=9, name="b-run", dataset="bds")
    res = CliRunner().invoke(cli, ["report", str(run_folder), str(other), "--out",
                                   str(tmp_path / "two"), "--test", "t-test", "--no-log"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "two" / "compare" / "compare.md").is_file()
    assert (tmp_path / "two" / "2-b-run" / "summary.tex").is_file()
    res = CliRunner().invoke(cli, ["report", str(run_folder), "--baseline", "nope", "--out",
                                   str(tmp_path / "three")])
    assert isinstance(res.exception, ReportError)


# ------------------------------------------------------------------------------------ (e) MLflow

@pytest.fixture(scope="module")
def mlflow_store(run_folder, tmp_path_factory):
    """A local SQLite MLflow store holding the fake run as a parent run with child runs."""
    from mlflow.tracking import MlflowClient
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("fakeds", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="fake-run", tags={"persrv.kind": "benchmark"})
    pid = parent.info.run_id
    for name in ("config.yaml", "results.csv", "results.md", "requests.tsv", "segments.parquet",
                 "history_sample.parquet"):
        client.log_artifact(pid, str(run_folder / name))
    client.log_artifacts(pid, str(run_folder / "plots"), "plots")
    children = {}
    for label in RETRIEVERS:
        child = client.create_run(exp, run_name=label, tags={
            "persrv.kind": "retriever", "mlflow.parentRunId": pid})
        client.log_artifacts(child.info.run_id, str(run_folder / "retrievers" / label))
        client.set_terminated(child.info.run_id)
        children[label] = child.info.run_id
    client.set_terminated(pid)
    return {"uri": uri, "parent": pid, "children": children, "client": client}


def test_fetch_run_rebuilds_the_folder(mlflow_store, run_folder, tmp_path):
    uri, pid = mlflow_store["uri"], mlflow_store["parent"]
    dest = fetch_run(pid, uri, tmp_path / "fetched")
    for name in ("config.yaml", "results.csv", "segments.parquet", "history_sample.parquet",
                 "plots/m_mrr_at_k.png", "retrievers/persrv/per_request.parquet",
                 "retrievers/bm25-copy/run.trec"):
        assert (dest / name).read_bytes() == (run_folder / name).read_bytes(), name
    assert (dest / "parent_run_id.txt").read_text().splitlines()[0] == pid
    by_name = fetch_run("fakeds", uri, root=tmp_path / "root")
    assert by_name == tmp_path / "root" / pid
    by_child = fetch_run(mlflow_store["children"]["persrv"], uri, tmp_path / "c")
    assert (by_child / "parent_run_id.txt").read_text().startswith(pid)
    with pytest.raises(RunNotFoundError, match="experiments there: fakeds"):
        fetch_run("no-such-experiment", uri, tmp_path / "x")
    with pytest.raises(RunNotFoundError):
        fetch_run("0" * 32, uri, tmp_path / "x")


def test_fetch_run_does_not_create_a_missing_sqlite_store(tmp_path):
    with pytest.raises(RunNotFoundError, match="no MLflow store"):
        fetch_run("fakeds", f"sqlite:///{tmp_path / 'absent.db'}", tmp_path / "x")
    assert not (tmp_path / "absent.db").exists()


def test_fetch_run_masks_credentials(monkeypatch, tmp_path):
    from bench.tracking import TrackingError
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(TrackingError) as info:
        fetch_run("some-experiment", "http://alice:s3cret@127.0.0.1:9", tmp_path / "x")
    assert "s3cret" not in str(info.value) and "***@127.0.0.1" in str(info.value)


def test_cli_report_from_run_id_logs_to_parent(mlflow_store, tmp_path, monkeypatch):
    from bench.cli import cli
    monkeypatch.chdir(tmp_path)
    uri, pid = mlflow_store["uri"], mlflow_store["parent"]
    res = CliRunner().invoke(cli, ["report", pid, "--tracking-uri", uri, "--fetch-dir",
                                   str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    assert f"logged to MLflow run {pid}" in res.output
    assert (tmp_path / "f" / pid / "report" / "report.md").is_file()
    logged = {a.path for a in mlflow_store["client"].list_artifacts(pid, "report")}
    assert {"report/report.md", "report/summary.tex", "report/m_mrr_curves.png",
            "report/report.html"} <= logged


def test_cli_report_on_folder_logs_to_its_parent_run(mlflow_store, run_folder, tmp_path):
    """A local folder with the runner's parent_run_id.txt logs its report to that run."""
    import shutil

    from bench.cli import cli
    folder = tmp_path / "local"
    shutil.copytree(run_folder, folder)
    child = mlflow_store["children"]["bm25"]  # any existing run will do as the target
    (folder / "parent_run_id.txt").write_text(f"{child}\n{mlflow_store['uri']}\n")
    res = CliRunner().invoke(cli, ["report", str(folder), "--test", "t-test"])
    assert res.exit_code == 0, res.output
    logged = {a.path for a in mlflow_store["client"].list_artifacts(child, "report")}
    assert "report/summary.csv" in logged
    (folder / "parent_run_id.txt").write_text(f"{child}\nsqlite:///{tmp_path / 'gone.db'}\n")
    res = CliRunner().invoke(cli, ["report", str(folder)])
    assert res.exit_code == 0 and "report not logged" in res.output
    assert not (tmp_path / "gone.db").exists()


# ------------------------------------------------------------------------------------ (f) scipy

def test_stats_agree_with_scipy_on_the_same_data():
    """Our CI and tests are scipy's: same data -> the same numbers as calling scipy directly, and
    the permutation test equals an exact enumeration of all 2^n sign flips by hand."""
    from itertools import product

    from scipy import stats
    rng = np.random.default_rng(4)
    x = rng.beta(0.7, 2.0, (60, 2))
    ref = stats.bootstrap((x[:, 0],), np.mean, n_resamples=300, method="percentile",
                          rng=np.random.default_rng(11)).confidence_interval
    assert bootstrap_ci(x[:, 0], n_boot=300, seed=11) == pytest.approx((ref.low, ref.high))
    low, high = bootstrap_ci(x, n_boot=300, seed=11)  # columns share resamples: column 0 equal
    assert (low[0], high[0]) == pytest.approx((ref.low, ref.high))
    bca = stats.bootstrap((x[:, 1],), np.mean, n_resamples=300, method="BCa",
                          rng=np.random.default_rng(2)).confidence_interval
    assert bootstrap_ci(x[:, 1], 300, 2, method="BCa") == pytest.approx((bca.low, bca.high))

    a, b = rng.random(10), rng.random(10) + 0.2  # 2^10 flips < n_perm: exact
    d = b - a
    flips = np.array(list(product((1.0, -1.0), repeat=10)))
    by_hand = np.mean(np.abs(flips @ d) / 10 >= abs(d.mean()) - 1e-12)
    p = paired_test(a, b, "permutation", n_perm=5000, seed=0)
    assert p == pytest.approx(by_hand)
    two_sided = stats.permutation_test((a, b), lambda u, v, axis: np.mean(v - u, axis=axis),
                                       permutation_type="samples", vectorized=True,
                                       n_resamples=5000).pvalue  # scipy's paired form
    assert p == pytest.approx(two_sided)
    a, b = rng.random(300), rng.random(300)
    assert paired_test(a, b, "t-test") == pytest.approx(stats.ttest_rel(b, a).pvalue)


# ------------------------------------------------------------------------------------ (g) tables

def _results(**macro_extra):
    from types import SimpleNamespace
    out = []
    for i, (label, err) in enumerate((("bm25", None), ("persrv", None), ("persrv-no-ocr", None),
                                      ("broken", "boom"))):
        macro = {} if err else {f"{m}_at_{k}": 0.1 * (i + 1) + 0.01 * j
                                for m in ("m_mrr", "mrr", "recall", "ndcg")
                                for j, k in enumerate((1, 20))}
        if not err:
            macro.update({key: v * (i + 1) for key, v in macro_extra.items()})
        out.append(SimpleNamespace(label=label, macro=macro, fit_seconds=1.234,
                                   search_seconds=0.5, error=err))
    return out


def test_results_table_and_format_table():
    from bench.report.tables import format_table, results_table
    table = results_table(_results(), [1, 20])
    assert list(table.columns[:3]) == ["retriever", "m_mrr_at_1", "m_mrr_at_20"]
    assert list(table["status"]) == ["ok", "ok", "ok", "failed"]
    assert table.loc[0, "fit_s"] == 1.23 and np.isnan(table.loc[3, "m_mrr_at_1"])
    md = format_table(table, [1, 20]).splitlines()
    assert md[0] == ("| retriever | m_mrr_at_1 | m_mrr_at_20 | mrr_at_20 | recall_at_20 | "
                     "ndcg_at_20 | fit s | search s | Δ m_mrr_at_20 vs persrv |")
    assert md[2] == "| bm25 | 0.1000 | 0.1100 | 0.1100 | 0.1100 | 0.1100 | 1.2 | 0.5 | |"
    assert md[4] == ("| persrv-no-ocr | 0.3000 | 0.3100 | 0.3100 | 0.3100 | 0.3100 | 1.2 | 0.5 "
                     "| +0.1000 |")
    assert md[5].startswith("| broken | failed | failed |")
    md = format_table(table, [1, 20], show_k=(20,))
    assert md.splitlines()[0].startswith("| retriever | m_mrr_at_20 | mrr_at_20 |")


def test_segment_columns_and_format_segment_table():
    from bench.report.tables import format_segment_table, format_table, results_table
    table = results_table(_results(m_mrr_at_20__refind=0.5, n__refind=40,
                                   m_mrr_at_20__cold_user=0.1, n__cold_user=7), [1, 20])
    assert list(table.columns[-4:]) == ["m_mrr_at_20__refind", "n__refind",
                                        "m_mrr_at_20__cold_user", "n__cold_user"]
    plain = results_table(_results(), [1, 20])
    assert format_table(table, [1, 20]) == format_table(plain, [1, 20])  # extras left out
    table["n__refind"] = 40  # the same requests for every retriever
    table["n__cold_user"] = [7, 7, 7, np.nan]
    md = format_segment_table(table, "m_mrr", 20).splitlines()
    assert md[0] == "| retriever | refind (n=40) | cold_user (n=7) |"  # DESIGN order, no gaps
    assert md[2] == "| bm25 | 0.5000 | 0.1000 |"
    assert md[4] == "| persrv-no-ocr | **1.5000** | **0.3000** |"
    assert md[5] == "| broken | failed | failed |"
    assert format_segment_table(plain, "m_mrr", 20) == ""
    assert format_segment_table(table, "mrr", 20) == ""


# ------------------------------------------------------------------------------------ (h) plots

QUICKSTART = ["random", "popularity", "bm25", "bm25-rank-bm25", "dense-text", "persrv-bm25",
              "persrv-no-personalization", "persrv-no-utility", "persrv-no-ocr",
              "persrv-no-queries", "persrv", "query-lookup"]


def test_style_for_gives_every_retriever_its_own_look():
    from bench.report.plots import linewidth_for, style_for
    styles = style_for(QUICKSTART)
    assert len(styles) == 12
    assert len({(c, str(ls)) for c, ls, _ in styles.values()}) == 12  # no shared colour + style
    assert style_for(list(reversed(QUICKSTART))) == styles  # the label set decides, not order
    greys = {styles[lb][0] for lb in ("bm25", "random", "popularity", "dense-text")}
    assert all(c[1:3] == c[3:5] == c[5:7] for c in greys)  # baselines: grey tones
    assert all(styles[lb][1] != "-" for lb in ("bm25", "random", "query-lookup"))  # dashed
    blues = [styles[lb][0] for lb in QUICKSTART if lb.startswith("persrv")]
    assert all(int(c[5:7], 16) > int(c[1:3], 16) for c in blues)  # one hue: blue dominates
    assert styles["persrv"][1] == "-"
    assert linewidth_for("persrv") > max(linewidth_for(lb) for lb in QUICKSTART if lb != "persrv")
    many = style_for([f"persrv-v{i}" for i in range(40)] + [f"other{i}" for i in range(40)]
                     + [f"dense-{i}" for i in range(40)])
    assert len({(c, str(ls)) for c, ls, _ in many.values()}) == 120


def _plot_both(monkeypatch, tmp_path, **show):
    """The runner's plot (table: query-lookup best) and the report's curves (summary: random
    best, popularity the best floor); returns {label: (colour, style, marker, width)} of each."""
    from bench.report import plots
    figures = []

    def keep(fig, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    ks = [1, 5, 10, 20]
    table = pd.DataFrame([{"retriever": lb, "status": "failed" if lb == "dense-text" else "ok",
                           **{f"m_mrr_at_{k}": 0.01 * i * k for k in ks}}
                          for i, lb in enumerate(QUICKSTART)])
    plots.plot_m_mrr(table, ks, tmp_path / "a.png", **show)
    summary = pd.DataFrame([{"retriever": lb, "metric": f"m_mrr_at_{k}", "mean": 0.02 * i,
                             "ci_low": 0.0, "ci_high": 0.05 * i}
                            for i, lb in enumerate(QUICKSTART[::-1]) for k in ks
                            if lb != "dense-text"])
    plots.plot_curves(summary, [lb for lb in QUICKSTART if lb != "dense-text"], ks,
                      tmp_path / "b.png", plots.style_for(QUICKSTART), **show)
    looks = []
    for fig in figures:
        ax = fig.axes[0]
        looks.append({ln.get_label(): (ln.get_color(), ln.get_linestyle(), ln.get_marker(),
                                       ln.get_linewidth()) for ln in ax.get_lines()})
        fig.canvas.draw()
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
        assert "k" in ax.get_xlabel() and "M-MRR@k" in ax.get_ylabel()
    return looks


def test_a_retriever_keeps_its_style_across_plots(monkeypatch, tmp_path):
    """With every retriever drawn, the runner's plot and the report's curves draw each label
    that is neither winner nor best floor with the same colour, line style and marker; the
    legend sits outside the axes."""
    from bench.report import plots
    looks = _plot_both(monkeypatch, tmp_path, show="all")
    assert len(looks[0]) == len(looks[1]) == 11
    roles = {"query-lookup", "random", "popularity"}  # winners and best floors of the two plots
    plain = [lb for lb in looks[0] if not any(lb.startswith(r) for r in roles)]
    assert len(plain) == 8 and all(looks[0][lb] == looks[1][lb] for lb in plain)
    assert looks[0]["persrv"][0] == plots.style_for(QUICKSTART)["persrv"][0]


def test_per_k_plot_shows_the_few_that_matter_winner_highlighted(monkeypatch, tmp_path):
    """By default the per-k plot draws the winner, the best floor, persrv and bm25 only (the
    rest on request), the winner thickest in the highlight colour, legend best first."""
    from bench.report import plots
    runner, report = _plot_both(monkeypatch, tmp_path)
    assert list(runner) == ["query-lookup (winner, best floor)", "persrv", "bm25"]
    assert list(report) == ["random (winner)", "popularity (best floor)", "bm25", "persrv"]
    for looks, winner in ((runner, "query-lookup (winner, best floor)"),
                          (report, "random (winner)")):
        assert looks[winner][0] == plots.WINNER_COLOUR
        assert looks[winner][3] == max(w for *_, w in looks.values())
    assert report["popularity (best floor)"][:2] == (plots.FLOOR_COLOUR, "--")
    assert len({c for c, *_ in report.values()}) == 4  # four lines, four colours
    with pytest.raises(Exception, match="no results for nope"):
        _plot_both(monkeypatch, tmp_path, show=["persrv", "nope"])


def test_leaderboard_ranks_with_cis_and_margins_to_the_best_floor(tmp_path):
    """The leaderboard of a run folder: best first, CIs around the means, the best floor's
    paired margins; the bar chart highlights winner and floor; the description names them."""
    from bench.report.folder import load_folder
    from bench.report.leaderboard import describe, key_labels, leaderboard
    from bench.report.plots import FLOOR_COLOUR, WINNER_COLOUR, plot_leaderboard
    rng = np.random.default_rng(0)
    folder = tmp_path / "run"
    users = [f"u{i}" for i in range(40)]
    for label, mean in (("popularity", 0.2), ("bm25", 0.3), ("persrv", 0.5),
                        ("query-lookup", 0.4)):
        out = folder / "retrievers" / label
        out.mkdir(parents=True)
        pd.DataFrame({"user_id": users * 2, "query": ["q"] * 80,
                      "m_mrr_at_20": np.clip(mean + rng.normal(0, 0.05, 80), 0, None),
                      "mrr_at_20": 0.1}).to_parquet(out / "per_request.parquet")
    import yaml
    (folder / "config.yaml").write_text(yaml.safe_dump({"name": "r", "retrievers": [
        {"name": n} for n in ("popularity", "bm25", "persrv", "query-lookup")]}))
    board = leaderboard(load_folder(folder), n_boot=500)
    t = board.table
    assert list(t["retriever"]) == ["persrv", "query-lookup", "bm25", "popularity"]
    assert list(t["rank"]) == [1, 2, 3, 4]
    assert board.winner == "persrv" and board.best_floor == "query-lookup"
    assert board.challenger == "persrv"
    assert ((t["ci_low"] < t["m_mrr_at_20"]) & (t["m_mrr_at_20"] < t["ci_high"])).all()
    row = board.row("persrv")
    assert row["delta_vs_best_floor"] == pytest.approx(0.1, abs=0.03)
    assert 0 < row["delta_ci_low"] < row["delta_vs_best_floor"] < row["delta_ci_high"]
    text = describe(board, "M-MRR@20")
    assert "**Winner: persrv**" in text and "Best floor baseline: query-lookup" in text
    assert ": better)" in text
    assert key_labels(t["retriever"], board.winner, board.best_floor, "bm25") == \
        ["persrv", "query-lookup", "bm25"]
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from bench.report import plots
    captured = []
    orig = plots.save_figure
    plots.save_figure = lambda fig, path: captured.append(fig) or orig(fig, path)
    try:
        path = plot_leaderboard(board, tmp_path / "leaderboard.png")
    finally:
        plots.save_figure = orig
    assert path.stat().st_size > 0
    bars = captured[0].axes[0].patches
    colours = [matplotlib.colors.to_hex(b.get_facecolor()) for b in bars]
    assert colours[0] == WINNER_COLOUR and colours[1] == FLOOR_COLOUR
    assert [b.get_width() for b in bars] == pytest.approx(list(t["m_mrr_at_20"]))
    plt.close("all")


# ------------------------------------------------------------------------------------ (i) html, segments

def _add_segment_columns(folder: Path) -> pd.DataFrame:
    segs = pd.read_parquet(folder / "segments.parquet")
    rng = np.random.default_rng(7)
    segs["query_segment"] = np.where(rng.random(len(segs)) < 0.6, "seen_query", "unseen_query")
    segs["history_segment"] = np.where(segs["history_clicks"] == 0, "discover",
                                       np.where(rng.random(len(segs)) < 0.5, "refind", "discover"))
    segs["cold_user"] = segs["history_clicks"] == 0
    segs.to_parquet(folder / "segments.parquet", index=False)
    return segs


def test_report_html_is_self_contained(run_folder, tmp_path):
    written = report_folder(run_folder, out=tmp_path / "h", n_boot=100)
    page = written["report.html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    # leaderboard, curves, ablation, clusters
    assert page.count('<img src="data:image/png;base64,') == 4
    assert 'src="m_mrr_curves.png"' not in page and 'src="leaderboard.png"' not in page
    for label in RETRIEVERS:
        assert f"<td>{label}" in page
    import base64
    images = []
    start = 0
    while (start := page.find("base64,", start)) >= 0:
        start += len("base64,")
        images.append(base64.b64decode(page[start:page.index('"', start)]))
    assert images[:2] == [written["leaderboard.png"].read_bytes(),
                          written["m_mrr_curves.png"].read_bytes()]
    assert "### Segments (" not in written["report.md"].read_text()  # no segment columns


def test_report_shows_design_segments_when_present(run_folder, tmp_path):
    import shutil
    folder = tmp_path / "seg"
    shutil.copytree(run_folder, folder)
    segs = _add_segment_columns(folder)
    written = report_folder(folder, out=tmp_path / "seg-rep", n_boot=100)
    seg = pd.read_csv(written["segments.csv"])
    assert {"query_segment", "history_segment", "cold_user"} <= set(seg["dimension"])
    one = seg[(seg["retriever"] == "persrv") & (seg["dimension"] == "cold_user")]
    assert list(one["group"]) == ["cold_user", "warm_user"]
    n_seen = int((segs["query_segment"] == "seen_query").sum())
    n_cold = int(segs["cold_user"].sum())
    md = written["report.md"].read_text()
    n_refind = int((segs["history_segment"] == "refind").sum())
    header = (f"| retriever | seen_query (n={n_seen}) | unseen_query (n={len(segs) - n_seen}) | "
              f"refind (n={n_refind}) | discover (n={len(segs) - n_refind}) | "
              f"cold_user (n={n_cold}) |")
    assert header in md
    pr = pd.read_parquet(folder / "retrievers" / "persrv" / "per_request.parquet")
    refind = pr[pr["qid"].isin(segs.loc[segs["history_segment"] == "refind", "qid"])]
    by_hand = refind.groupby("user_id")["m_mrr_at_20"].mean().mean()
    section = md[md.index("### Segments (docs/ARCHITECTURE.md, 'Metrics'): M-MRR@20"):].split("\n\n")[1].splitlines()
    assert section[0] == header
    cells = next(ln for ln in section if ln.startswith("| persrv |")).split("|")
    assert cells[4].strip().strip("*") == f"{by_hand:.4f}"  # refind: 4th column
    assert "### By query segment" in md and "### By cold user" in md
