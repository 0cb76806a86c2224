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
from bench.report import (ReportError, RunNotFoundError, bootstrap_ci, compare_folders,
                          fetch_run, holm, load_folder, paired_test, report_folder)

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
    assert {"report/report.md", "report/summary.tex", "report/m_mrr_curves.png"} <= logged


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
