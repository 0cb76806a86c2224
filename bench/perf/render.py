"""perf.md and scaling.png of ``persrv-bench perf``: the tables it prints (one function per
section), before/after per stage against an earlier perf.json, the scaling plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.perf.config import ORDER, STAGE_COLUMNS


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _header(result: dict[str, Any]) -> list[str]:
    """Title, machine, load, the workload's shape."""
    cfg, ds, m = result["config"], result.get("dataset", {}), result["machine"]
    lines = [f"# persrv-bench perf: {ds.get('stickers', 0):,} stickers, "
             f"{ds.get('requests', 0):,} test requests, k={cfg['k']}, pool={cfg['pool']}", ""]
    cpu = result.get("cpu", {})
    share = ""
    if cpu.get("machine_busy_cpu_s"):
        share = (f"; CPU: this process {cpu['process_cpu_s']:.0f} s of the machine's "
                 f"{cpu['machine_busy_cpu_s']:.0f} busy CPU-seconds")
    lines += [f"Machine: {m.get('cpus')} CPUs ({m.get('cpus_available')} usable), "
              f"{_f(m.get('mem_total_gb'), '{:.0f}')} GB; load average "
              f"{'/'.join(f'{x:.2f}' for x in result['load_start'])} at start, "
              f"{'/'.join(f'{x:.2f}' for x in result.get('load_end', []))} at the end of the "
              f"measurements (before the scaling runs){share}. "
              f"Python {m.get('python')}, numpy {m.get('numpy')}, scipy {m.get('scipy')}.",
              f"Workload **{ds.get('workload')}**: {ds.get('name')} ({ds.get('fingerprint')}), "
              f"{ds.get('stickers', 0):,} stickers ({_f(ds.get('with_ocr_text'), '{:,}')} with "
              f"OCR text, {_f(ds.get('topics'), '{:,}')} topics), {ds.get('clicks', 0):,} "
              f"clicks, {ds.get('users', 0):,} users (simulated, per-user style preferences), "
              f"{ds.get('test_requests', 0):,} test requests of which {ds.get('requests', 0):,} "
              f"run, **{_f(ds.get('distinct_queries'), '{:,}')} distinct test queries** (words: "
              + ", ".join(f"{n if n != '4' else '4+'}: {c:,}"
                          for n, c in (ds.get("query_words") or {}).items())
              + f"; {_f(ds.get('distinct_queries_all'), '{:,}')} distinct query strings in "
              f"the simulator), text-only with precomputed "
              f"{ds.get('embedding_dim')}-d style vectors; "
              + ("built in a subprocess in " + _f(ds.get('built_s'), '{:.1f}') + " s (not "
                 "counted)" if ds.get("built_s") else "from the dataset cache")
              + "; data stages: " + ", ".join(f"{k} {v['seconds']:.2f} s"
                                      for k, v in ds.get("stages", {}).items()) + ".", ""]
    return lines


def _retrievers(result: dict[str, Any]) -> list[str]:
    """Stage table of every retriever and the pipeline total."""
    lines: list[str] = []
    cfg = result["config"]
    recs = result.get("retrievers", {})
    if recs:
        lines += ["## Retrievers (wall seconds per stage, in run order)", "",
                  "| retriever | " + " | ".join(STAGE_COLUMNS) + " | end to end | req/s "
                  "(search) | peak RSS MB | M-MRR@" + str(cfg["k"]) + " |",
                  "|---|" + "---:|" * (len(STAGE_COLUMNS) + 4)]
        for name, r in recs.items():
            st = r["stages"]
            cells = [_f(st[c]["seconds"]) if c in st else "" for c in STAGE_COLUMNS]
            if r.get("recall_shared") and "recall" in st:
                cells[STAGE_COLUMNS.index("recall")] += " (shared)"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['e2e_s']:.2f} | "
                         f"{_f(r['requests_per_s'], '{:,.0f}')} | {r['peak_rss_mb']:,.0f} | "
                         f"{_f(r['m_mrr'], '{:.4f}')} |")
        pipe = result["pipeline"]
        n_def = sum(n in ORDER for n in recs)
        if "default_s" in pipe and n_def < len(recs):
            lines += ["", f"Pipeline (the {n_def} default retrievers, bm25 + PerSRV variants, "
                          f"the target): **{pipe['default_s']:.1f} s**; the others "
                          f"({', '.join(n for n in recs if n not in ORDER)}) "
                          f"{pipe['retrievers_s'] - pipe['default_s']:.1f} s more."]
        lines += ["", f"All {len(recs)} retrievers: **{pipe['retrievers_s']:.1f} s** "
                      f"(+ {pipe['data_s']:.1f} s data loading = {pipe['with_data_s']:.1f} s); "
                      f"process peak RSS **{pipe['peak_rss_mb'] / 1024:.2f} GB**. bm25's recall "
                      "column is its whole search (top k). `(shared)`: the recall pools came "
                      "from an earlier variant with identical recall (per-process cache); field "
                      "term counts are shared the same way, so later variants' index builds "
                      "are cheaper than a lone fit.", ""]
    return lines


def _rank_bm25(result: dict[str, Any]) -> list[str]:
    """The baseline vs rank-bm25 (sampled, extrapolated) and the identity check."""
    lines: list[str] = []
    rb = result.get("rank_bm25")
    if rb and "error" not in rb:
        ident = rb["identity"]
        lines += [f"## BM25: ours (backend {rb.get('backend', 'bm25s')}) vs rank-bm25", "",
                  f"rank-bm25 (`BM25Okapi`) ran {rb['sample_requests']} sampled requests "
                  f"({rb['sample_distinct_queries']} distinct queries) and is **extrapolated** "
                  f"to all requests ({rb['extrapolation']}).", "",
                  "| | ours | rank-bm25 | ratio |", "|---|---:|---:|---:|",
                  f"| index build s | {rb['bm25s_fit_s']:.2f} | {rb['rank_bm25_fit_s']:.2f} | "
                  f"{rb['rank_bm25_fit_s'] / max(rb['bm25s_fit_s'], 1e-9):.1f}x |",
                  f"| search, sample s | {rb['bm25s_search_sample_s']:.3f} | "
                  f"{rb['rank_bm25_search_sample_s']:.2f} | "
                  f"{_f(rb['speedup_search_same_sample'], '{:,.0f}')}x |",
                  f"| search, all requests s | {rb['bm25s_search_s']:.3f} | "
                  f"{rb['rank_bm25_search_extrapolated_s']:.1f} (extrapolated) | "
                  f"**{_f(rb['speedup_search'], '{:,.0f}')}x** |",
                  f"| index + search s | {rb['bm25s_fit_s'] + rb['bm25s_search_s']:.2f} | "
                  f"{rb['rank_bm25_fit_s'] + rb['rank_bm25_search_extrapolated_s']:.1f} | "
                  f"{rb['speedup_end_to_end']:.1f}x |", "",
                  f"Top-k identity under rank-bm25's formula ({ident['compared']}): "
                  f"**{ident['identical_up_to_ties']}/{ident['queries']}** identical up to "
                  f"float32 ties ({ident['identical']} strictly identical); largest relative "
                  f"score difference {ident['max_rel_score_diff']:.1e}; okapi idf vs "
                  f"rank-bm25's own idf: max |diff| {ident['okapi_idf_max_abs_diff']:.1e}. "
                  f"The Lucene-formula baseline as run matches rank-bm25's top-k on "
                  f"{rb['lucene_vs_rank_bm25']['identical']}/{ident['queries']} (different "
                  "idf: not expected to match in general).", ""]
    return lines


def _peers(result: dict[str, Any]) -> list[str]:
    """bm25s (numba) and tantivy vs the baseline: times, ratios, overlap@k."""
    pe = result.get("peers")
    if not pe or "error" in pe:
        return [f"Peers not measured: {pe['error']}", ""] if pe else []
    k = result["config"]["k"]
    lines = ["## BM25: ours vs the fastest peers (same documents, every request)", "",
             f"{pe['documents']:,} documents, {pe['scored_queries']:,} query scorings "
             f"({pe['distinct_queries']:,} distinct queries), {pe['threads']} threads. Ratio = "
             "peer (index + search) / ours (index + search); > 1: ours is faster. Peers get "
             "the text pre-tokenised by our tokenizer (not counted in their time).", "",
             f"| | index s | search s | index + search s | ratio | overlap@{k} | identical "
             "top-k |", "|---|---:|---:|---:|---:|---:|---:|",
             f"| bm25 (ours) | {pe['bm25_index_s']:.2f} | {pe['bm25_search_s']:.2f} | "
             f"{pe['bm25_total_s']:.2f} | 1 | 1 | – |"]
    rb = result.get("rank_bm25") or {}
    if rb.get("speedup_end_to_end"):
        lines.append(f"| rank-bm25 (extrapolated) | {rb['rank_bm25_fit_s']:.2f} | "
                     f"{rb['rank_bm25_search_extrapolated_s']:.1f} | "
                     f"{rb['rank_bm25_fit_s'] + rb['rank_bm25_search_extrapolated_s']:.1f} | "
                     f"**{rb['speedup_end_to_end']:.1f}x** | – | – |")
    notes = []
    for name, p in pe["peers"].items():
        if "error" in p:
            notes.append(f"{name} not measured: {p['error']}")
            continue
        ag = p["agreement"]
        lines.append(f"| {name} | {p['index_s']:.2f} | {p['search_s']:.2f} | "
                     f"{p['total_s']:.2f} | **{_f(p['ratio'], '{:.2f}')}x** | "
                     f"{ag['mean_overlap_at_k']:.4f} | {ag['identical']:,}/{ag['queries']:,} |")
        if "jit_s" in p:
            notes.append(f"bm25s-numba compiled its kernels in {p['jit_s']:.1f} s on a first "
                         "call (not counted)")
    return lines + [""] + ([". ".join(notes) + ".", ""] if notes else [])


def _compare(result: dict[str, Any]) -> list[str]:
    """Before (an earlier perf.json, ``--compare``) / after, per retriever and stage."""
    cmp_ = result.get("compare")
    if not cmp_:
        return []
    old = cmp_["before"].get("retrievers") or {}
    ods = cmp_["before"].get("dataset") or {}
    lines = [f"## Before / after per stage (before: `{cmp_['path']}`, "
             f"{cmp_['before'].get('started') or '?'}, workload {ods.get('workload', '?')}, "
             f"{ods.get('stickers', 0):,} stickers)", "",
             "| retriever | " + " | ".join(STAGE_COLUMNS) + " | end to end | M-MRR@"
             f"{result['config']['k']} |", "|---|" + "---:|" * (len(STAGE_COLUMNS) + 2)]

    def cell(a: dict | None, b: dict | None) -> str:
        x = None if a is None else a.get("seconds")
        y = None if b is None else b.get("seconds")
        return "" if x is None and y is None else f"{_f(x)} → {_f(y)}"
    for name, r in result.get("retrievers", {}).items():
        o = old.get(name) or {}
        cells = [cell((o.get("stages") or {}).get(c), r["stages"].get(c)) for c in STAGE_COLUMNS]
        same = "" if o.get("m_mrr") is None else \
            (" (same)" if o["m_mrr"] == r["m_mrr"] else f" (was {o['m_mrr']:.4f})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_f(o.get('e2e_s'))} → "
                     f"{r['e2e_s']:.2f} | {_f(r['m_mrr'], '{:.4f}')}{same} |")
    op = cmp_["before"].get("pipeline") or {}
    names = [n for n in result.get("retrievers", {}) if n in ORDER]
    old_s = sum(old[n]["e2e_s"] for n in names if n in old) \
        if all(n in old for n in names) else None
    new_s = sum(result["retrievers"][n]["e2e_s"] for n in names)
    lines += ["", f"Pipeline ({len(names)} default retrievers, the same in both runs): "
                  f"{_f(old_s, '{:.1f}')} s → {new_s:.1f} s (all retrievers of each run: "
                  f"{_f(op.get('retrievers_s'), '{:.1f}')} s → "
                  f"{result['pipeline']['retrievers_s']:.1f} s); peak RSS "
                  f"{_f((op.get('peak_rss_mb') or 0) / 1024 or None)} GB → "
                  f"{result['pipeline']['peak_rss_mb'] / 1024:.2f} GB.", ""]
    return lines


def _naive(result: dict[str, Any]) -> list[str]:
    """PerSRV vs the naive per-candidate loop."""
    lines: list[str] = []
    nv = result.get("naive")
    if nv and "error" not in nv:
        ag = nv["agreement"]
        lines += ["## PerSRV vs a naive per-candidate Python loop", "",
                  f"Naive loop (reference style: per request, per candidate, BM25 from dict "
                  f"lookups + cosine to each centroid in pure Python) on {nv['sample_requests']} "
                  f"sampled requests ({nv['sample_with_clusters']} with clusters), "
                  f"**extrapolated** {nv['extrapolation']}: {nv['per_request_s'] * 1e3:.1f} ms "
                  f"per request (recall {nv['recall_per_request_s'] * 1e3:.1f} ms, re-rank "
                  f"{nv['rerank_per_request_s'] * 1e3:.1f} ms) -> {nv['extrapolated_s']:.1f} s "
                  f"for all requests vs PerSRV's search {nv['ours_search_s']:.2f} s: "
                  f"**{_f(nv['speedup'], '{:,.0f}')}x** "
                  f"(recall {_f(nv['speedup_recall'], '{:,.0f}')}x, "
                  f"re-rank {_f(nv['speedup_rerank'], '{:,.0f}')}x; "
                  f"{_f(nv['speedup_if_naive_cached_queries'], '{:,.0f}')}x if the naive loop "
                  f"also answered each distinct query's recall once). Setup "
                  f"{nv['setup_s']:.2f} s not counted. Same top-k as PerSRV on "
                  f"**{ag['identical_up_to_ties']}/{ag['requests']}** requests up to float32 "
                  f"ties ({ag['identical_top_k']} strictly identical; mean overlap@k "
                  f"{ag['mean_overlap_at_k']:.3f}).", ""]
    return lines


def _sweep_and_help(result: dict[str, Any]) -> list[str]:
    """One sweep trial and ``--help``."""
    lines: list[str] = []
    sw = result.get("sweep")
    if sw and "error" not in sw:
        st = sw["stages"]
        lines += ["## One sweep trial", "",
                  f"{sw['requests']:,} validation requests: `with_params(n_clusters="
                  f"{sw['n_clusters']})` re-cluster {st['recluster']['seconds']:.2f} s + search "
                  f"{st['search']['seconds']:.2f} s + metrics {st['metrics']['seconds']:.2f} s = "
                  f"**{sw['trial_s']:.2f} s** (peak {sw['peak_rss_mb']:,.0f} MB). Once per "
                  f"study: base fit {sw['base_fit_s']:.1f} s, first trial (recall pools "
                  f"computed) {sw['first_trial_s']:.1f} s.", ""]
    hp = result.get("help")
    if hp and "median_s" in hp:
        lines += [f"`{hp['command']}`: {hp['median_s'] * 1e3:.0f} ms (median of "
                  f"{len(hp['seconds'])}, fresh processes).", ""]
    return lines


def _targets(result: dict[str, Any]) -> list[str]:
    """The targets, met or missed."""
    lines: list[str] = []
    lines += ["## Targets" + ("" if all(t["paper_scale"] for t in result["targets"].values())
                              else " (informational: not paper scale)"), "",
              "| target | measured | goal | status | what |", "|---|---:|---:|---|---|"]
    for name, t in result["targets"].items():
        status = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {name} | {_f(t['measured'], '{:,.3g}')} {t['unit']} | {t['op']} "
                     f"{t['goal']:g} {t['unit']} | {status} | {t['note']} |")
    lines.append("")
    return lines


def scaling_table(points: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per corpus size (every stage of bm25 and persrv, seconds; memory,
    MB) and a last row with each column's fitted log-log exponent."""
    from bench.perf.scaling import SCALING_COLUMNS, fit_exponents
    pts = sorted((p for p in points if "error" not in p), key=lambda p: p["size"])
    if not pts:
        return []
    heads = [h for h, _ in SCALING_COLUMNS]
    lines = ["| stickers | requests | fitting clicks | " + " | ".join(heads) + " |",
             "|" + "---:|" * (3 + len(heads))]
    for p in pts:
        cells = []
        for head, value in SCALING_COLUMNS:
            v = value(p)
            cells.append("" if v is None else f"{v:,.0f}" if head.endswith("MB") else f"{v:.2f}")
        lines.append(f"| {p['size']:,} | {p['requests']:,} | {p['clicks']:,} | "
                     + " | ".join(cells) + " |")
    slopes = fit_exponents(pts)
    lines.append("| **exponent** (log-log slope) | | | " + " | ".join(
        "" if slopes[h] is None else f"**{slopes[h]:.2f}**" for h in heads) + " |")
    return lines


def _scaling(result: dict[str, Any]) -> list[str]:
    """The scaling table (and failed points)."""
    lines: list[str] = []
    table = scaling_table(result.get("scaling") or [])
    if table:
        lines += ["## Scaling (bm25 + persrv, one fresh process per size, requests at the "
                  "paper's density)", "", *table, ""]
    for p in result.get("scaling") or []:
        if "error" in p:
            lines.append(f"scaling point {p['size']:,} failed: {p['error'][-300:]}")
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    """perf.md: the tables ``persrv-bench perf`` prints."""
    lines: list[str] = []
    for section in (_header, _retrievers, _compare, _rank_bm25, _peers, _naive,
                    _sweep_and_help, _targets, _scaling):
        lines += section(result)
    lines.append("Users are simulated (docs/ARCHITECTURE.md, 'Data'). Wall times on a shared machine are noisy: "
                 "see the load average above.")
    return "\n".join(lines) + "\n"


def plot_scaling(points: list[dict[str, Any]], path: Path) -> Path | None:
    """PNG: stage seconds and memory against corpus size (log-log)."""
    pts = sorted((p for p in points if "error" not in p), key=lambda p: p["size"])
    if not pts:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [p["size"] for p in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    from bench.perf.scaling import SCALING_COLUMNS, TOTAL_HEAD, fit_exponents
    slopes = fit_exponents(pts)
    for head, value in SCALING_COLUMNS:
        if head.endswith("MB"):
            continue
        ys = [value(p) for p in pts]
        if not any(y and y > 0.01 for y in ys):
            continue
        slope = f" (slope {slopes[head]:.2f})" if slopes.get(head) is not None else ""
        ax1.plot(x, [max(y or 0.0, 1e-3) for y in ys], marker="o", label=head + slope,
                 linewidth=2.2 if head == TOTAL_HEAD else 1.0)  # the total, thick
    for p in pts:
        ax1.annotate(f"{p['requests']:,} req", (p["size"], p["total_s"]), fontsize=7,
                     textcoords="offset points", xytext=(-18, 7))
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("stickers")
    ax1.set_ylabel("wall seconds")
    ax1.set_title("time vs corpus size")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=6, ncol=2)
    for head, key, marker in (("peak RSS MB", "peak_rss_mb", "o"),
                              ("RSS after load MB", "rss_loaded_mb", "s")):
        slope = f" (slope {slopes[head]:.2f})" if slopes.get(head) is not None else ""
        ax2.plot(x, [p[key] for p in pts], marker=marker, label=head.replace(" MB", "") + slope)
    ax2.set_yscale("log")
    ax2.set_xscale("log")
    ax2.set_xlabel("stickers")
    ax2.set_ylabel("MB")
    ax2.set_title("memory vs corpus size")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


