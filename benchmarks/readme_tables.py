"""Regenerate the README's result tables from fresh runs (the README's numbers are never typed).

    python benchmarks/readme_tables.py                 # every table (several minutes on 2 cores)
    python benchmarks/readme_tables.py quickstart      # only the named blocks
    python benchmarks/readme_tables.py --check         # exit 1 if the README differs from a fresh run

Each table lives in README.md between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; this
script reruns the job behind it (``JOBS``), renders it with the run's own table code
(``bench.report.tables``, no timing columns: those vary from machine to machine and are printed
on the line below the table instead) and rewrites the block in place. ``tests/test_readme.py`` checks that the quickstart block equals a fresh run.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: block name -> (experiment config, extra overrides, seeds or None)
JOBS: dict[str, tuple[str, list[str], list[int] | None]] = {
    "quickstart": ("experiments/quickstart.yaml", [], None),
    "quickstart-seeds": ("experiments/quickstart.yaml", [], [0, 1, 2]),
    "loqo": ("experiments/sticker_queries_loqo.yaml", [], [0, 1, 2, 3, 4]),
    "fidelity": ("experiments/quickstart.yaml", [], None),  # benchmarks/fidelity_table.py
    # `persrv-bench calibrate`: 2 seeds of 300 users per level (the quickstart bed image-less, so
    # each level builds in seconds: simulated OCR text, the builder's style vectors)
    "calibrate-quickstart": ("experiments/quickstart.yaml",
                             ["dataset.params.images=false", "features.ocr=false",
                              "features.encoder=precomputed"], [0, 1]),
    "calibrate-emoji-styles": ("experiments/emoji_styles.yaml", [], [0, 1]),
    "timings": ("experiments/quickstart.yaml", [], None),  # timings_block
    # `perf`'s scaling curve, 54,310 ... 5,430,980 stickers (scaling_block; ~1 h on 2 cores the
    # first time, mostly building the datasets): only when named, never by --check
    "scaling": ("", [], None),
    # train-clip (LiT) on emoji-styles, 3 training seeds, then one run with the three towers
    # (benchmarks/clip_lit_segments.py --train; ~15 min on 2 cores): only when named
    "clip-lit": ("experiments/emoji_styles_clip.yaml", [], [0, 1, 2]),
    # text stand-ins for the LiT image tower on the same bed (clip_bounds_block): only when named
    "clip-bounds": ("experiments/emoji_styles_clip.yaml", [], None),
    # perf --stage features --images 400 (features_bench_block): timings, only when named
    "features-bench": ("", [], None),
    # the features bench with PP-OCRv4's graphs as shipped and folded, runs alternated
    # (features_graphs_block): timings, only when named
    "features-graphs": ("", [], None),
    # `persrv-bench features` CER on the quickstart's rendered stickers (ocr_engines_block)
    "ocr-engines": ("experiments/quickstart.yaml", [], None),
}
#: blocks regenerated only when named (long, and timings that vary between machines)
ON_REQUEST = ("scaling", "clip-lit", "clip-bounds", "features-bench", "features-graphs",
              "ocr-engines")
#: runs per graph of the features-graphs block
GRAPH_RUNS = 3
#: the ocr-engines block's columns: `persrv-bench features experiments/quickstart.yaml -o ...`
OCR_COLUMNS = {"200 English synthetic stickers": ["dataset.params.n_stickers=200"],
               "100 Chinese synthetic stickers": ["dataset.params.n_stickers=100",
                                                  "dataset.params.language=zh"]}
#: where the scaling block's figure is written (the README shows it)
SCALING_PNG = ROOT / "docs" / "scaling.png"
CALIBRATE_USERS = 300
#: the "timings" block: the README's main job, cold (empty cache) then warm, in fresh processes
TIMED_COMMAND = ["-m", "bench", "run", "experiments/quickstart.yaml", "tracking.enabled=false",
                 "report=false"]


def machine_line(load: bool = True) -> str:
    """CPU model, cores this process may use, load average (unless ``load`` is False: blocks
    whose runs each print their own): printed beside every timing."""
    import os
    import platform
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), model)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores" + (f", load average {os.getloadavg()[0]:.2f}" if load else "")


def wait_for_quiet(limit_s: float = 300) -> float:
    """Wait (at most ``limit_s``) until the 1-min load average is <= 1 — a wall time measured at
    load > 1 is not one for the README — and return the load average then."""
    import os
    for _ in range(int(limit_s // 5)):
        if os.getloadavg()[0] <= 1.0:
            break
        time.sleep(5)
    return os.getloadavg()[0]


def timings_block(workdir: Path) -> str:
    """Wall and CPU seconds of the main job cold and warm (fresh processes, a new cache), and of
    ``persrv-bench --help``, with the machine and the load each ran under."""
    import os
    import resource
    import subprocess
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PERSRV_BENCH_CACHE": str(workdir / "cache"), "PERSRV_BENCH_QUIET": "1"}
    rows = []
    for what, args in (("cold (dataset built, OCR, embeddings, encodings)", TIMED_COMMAND),
                       ("warm (everything cached)", TIMED_COMMAND),
                       ("`persrv-bench --help`", ["-m", "bench", "--help"])):
        load = wait_for_quiet()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, *args, f"output_dir={workdir / 'runs'}"]
                             if "run" in args else [sys.executable, *args], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            raise SystemExit(f"{what} failed:\n{out.stderr[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rows.append(f"| {what} | {wall:.0f} | {cpu:.0f} | {load:.2f} |")
    # CPU: the run's process and what it waited for (OCR worker processes of the forkserver
    # pool are not counted)
    return ("| main job | wall s | CPU s, main process | load average before |\n"
            "|---|---:|---:|---:|\n"
            + "\n".join(rows) + f"\n\n`python benchmarks/readme_tables.py timings` on "
            f"{machine_line()} after the runs.\n")

BLOCK_RE = r"(<!-- table:{name} -->\n)(.*?)(<!-- /table:{name} -->)"

#: Largest difference allowed between a README number and a fresh run's on another machine.
#: Scores are quantised before ranking (bench/listing.py), so runs on one machine agree exactly
#: for any thread count; across CPUs the largest difference measured before quantisation was
#: 0.0018 (persrv-no-utility, issue 22): the check allows a little more.
TOLERANCE = 0.0025
NUMBER_RE = re.compile(r"[-+]?\d+\.\d+")


def tables_match(old: str, new: str, tolerance: float = TOLERANCE) -> tuple[bool, str]:
    """Whether two rendered tables agree: the same text once numbers are taken out, and every
    number within ``tolerance``. Returns (match, the first difference)."""
    if NUMBER_RE.sub("#", old.strip()) != NUMBER_RE.sub("#", new.strip()):
        for a, b in zip(old.strip().splitlines(), new.strip().splitlines()):
            if NUMBER_RE.sub("#", a) != NUMBER_RE.sub("#", b):
                return False, f"layout differs:\n  README: {a}\n  fresh:  {b}"
        return False, "layout differs (line count)"
    for x, y in zip(NUMBER_RE.findall(old), NUMBER_RE.findall(new)):
        if abs(float(x) - float(y)) > tolerance:
            return False, f"{x} (README) vs {y} (fresh run): beyond the tolerance {tolerance}"
    return True, ""


def metric_table(table, ks: list[int]) -> str:
    """The run's own results table without its timing columns (they vary from machine to
    machine), then its M-MRR@kmax segment table — what ``results.md`` shows."""
    from bench.report.tables import format_segment_table, format_table
    kmax = max(ks)
    body = format_table(table, ks, timings=False)
    segments = format_segment_table(table, "m_mrr", kmax)
    if segments:
        body += f"\n\nM-MRR@{kmax} by segment (request counts in the header):\n\n{segments}"
    return body


def fidelity_block() -> str:
    """The fidelity table, as ``benchmarks/fidelity_table.py`` prints it."""
    import contextlib
    import io
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fidelity_table
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fidelity_table.main([])
    return out.getvalue().rstrip() + "\n\n`python benchmarks/fidelity_table.py`\n"


def calibrate_block(name: str, workdir: Path) -> str:
    """The bed self-test's dose-response tables, as ``persrv-bench calibrate`` prints them."""
    from bench.calibrate.output import format_table
    from bench.calibrate.sweep import calibrate
    from bench.config import load_config
    config, overrides, seeds = JOBS[name]
    cfg = load_config(ROOT / config, [*overrides, "tracking.enabled=false"])
    t0 = time.perf_counter()
    cal = calibrate(cfg, seeds=seeds, n_users=CALIBRATE_USERS, folder=workdir)
    seconds = time.perf_counter() - t0
    flags = "".join(f" -o {o}" for o in overrides)
    return (f"{format_table(cal)}\n\n`persrv-bench calibrate {config}{flags} --seeds "
            f"{','.join(map(str, seeds))} --n-users {CALIBRATE_USERS}` ({seconds:.0f} s wall "
            f"on {machine_line()}).\n")


def scaling_block(workdir: Path) -> str:
    """``perf``'s scaling curve (bm25 + persrv, zipf, one fresh process per size, requests at
    the paper's density): the table with fitted exponents, docs/scaling.png, the machine line."""
    import os
    from bench.perf.config import DEFAULT_SCALING, PerfConfig
    from bench.perf.render import plot_scaling, scaling_table
    from bench.perf.scaling import run_scaling
    t0 = time.perf_counter()
    points = run_scaling(DEFAULT_SCALING, PerfConfig(workload="zipf"),
                         echo=lambda s: print(s, file=sys.stderr), timeout=3 * 3600,
                         before_point=wait_for_quiet)
    failed = [p for p in points if "error" in p]
    if failed:
        raise SystemExit(f"scaling point {failed[0]['size']:,} failed: {failed[0]['error']}")
    plot_scaling(points, SCALING_PNG)
    loads = [p.get("load_before", float("nan")) for p in points]
    return ("\n".join(scaling_table(points)) + "\n\n![scaling](docs/scaling.png)\n\n"
            f"`python benchmarks/readme_tables.py scaling` ({time.perf_counter() - t0:.0f} s wall "
            f"incl. dataset builds; each point's 1-min load average before it ran: "
            f"{', '.join(f'{x:.2f}' for x in loads)}; on {machine_line()}; "
            f"max RAM {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB)."
            "\n")


def clip_lit_block(workdir: Path) -> str:
    """The LiT dense-clip per training seed against the floors, per segment, paired CIs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from clip_lit_segments import train_and_compare
    t0 = time.perf_counter()
    table, trained = train_and_compare(workdir, JOBS["clip-lit"][2])
    runs = "; ".join(f"seed {s}: {t['seconds']:.0f} s ({t['epochs']} epochs, load "
                     f"{t['load_before']:.2f} before)" for s, t in trained.items())
    return (f"{table}\n\n`python benchmarks/clip_lit_segments.py --train --seeds 0 1 2` "
            f"(M-MRR@20 by segment; Δ: paired over the segment's users, bootstrap 95% CI, "
            f"sign-flip permutation p; training {runs}; {time.perf_counter() - t0:.0f} s in "
            f"all, on {machine_line()}).\n")


def clip_bounds_block(workdir: Path) -> str:
    """The LiT bed with text stand-ins for the image tower (clip_lit_segments.content_bounds)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from clip_lit_segments import content_bounds
    t0 = time.perf_counter()
    table = content_bounds(workdir)
    return (f"{table}\n\n`python benchmarks/clip_lit_segments.py --bounds` (M-MRR@20 by "
            f"segment; Δ: paired over the segment's users, bootstrap 95% CI, sign-flip "
            f"permutation p; {time.perf_counter() - t0:.0f} s on {machine_line()}).\n")


#: runs of the features bench behind the README block (the median one is shown)
FEATURES_REPEATS = 5


def features_bench_block(workdir: Path) -> str:
    """``persrv-bench perf --stage features --images 400 --repeat 5`` (2 worker processes), its
    own lines; each run started once the 1-min load average is <= 1."""
    from bench.perf.features_bench import format_result, run_features_repeats
    result = run_features_repeats(400, FEATURES_REPEATS, workers=2, parallel="processes",
                                  out=workdir, echo=lambda _: None,
                                  before_run=lambda _: wait_for_quiet())
    return ("| measure | figures |\n|---|---|\n" + "\n".join(
        f"| {line.split(':', 1)[0]} | {line.split(':', 1)[1].strip() if ':' in line else ''} |"
        for line in format_result(result)) +
        f"\n\n`persrv-bench perf --stage features --images 400 --repeat {FEATURES_REPEATS}` (on "
        f"{machine_line(load=False)}; each run started at a 1-min load average <= 1, under "
        "repeats).\n")


def features_graphs_block(workdir: Path, n: int = 400, runs: int = GRAPH_RUNS) -> str:
    """The features bench (``n`` images, 2 worker processes) with ``--ocr-graph rapidocr`` and
    ``folded``, ``runs`` each, alternated so that the host's drift falls on both; each run
    started once the 1-min load average is <= 1."""
    import statistics

    from bench.perf.features_bench import run_features_bench
    graphs = {"rapidocr": "as rapidocr ships them", "folded": "folded"}
    results: dict[str, list] = {g: [] for g in graphs}
    for _ in range(runs):
        for graph in graphs:
            wait_for_quiet()
            results[graph].append(run_features_bench(
                n, workers=2, parallel="processes", out=workdir, echo=lambda _: None,
                ocr_graph=graph))
    rows = []
    for graph, label in graphs.items():
        rs = results[graph]
        rates = [r["steady_images_per_s"] or r["images_per_s"] for r in rs]
        cer = {lang: {f"{r['cer'][lang]['cer_mean']:.3f}" for r in rs} for lang in ("en", "zh")}
        cpu = ", ".join(f"{r['cpu_ms_per_image']:.1f}" for r in rs)
        loads = ", ".join(f"{r['load_start'][0]:.2f}" for r in rs)
        rows.append(f"| {label} | {', '.join(f'{x:.1f}' for x in rates)} | "
                    f"{statistics.median(rates):.1f} | {cpu} | {', '.join(sorted(cer['en']))} | "
                    f"{', '.join(sorted(cer['zh']))} | {loads} |")
    return ("| PP-OCRv4 graphs | steady images/s per run | median | CPU ms per image | "
            "CER English | CER Chinese | load at start |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\n`persrv-bench perf --stage features --images {n} "
            f"--ocr-graph rapidocr|folded`, {runs} runs each, alternated (on "
            f"{machine_line(load=False)}; each run started at a 1-min load average <= 1).\n")


def ocr_engines_block(workdir: Path) -> str:
    """``persrv-bench features`` on the quickstart's rendered stickers, English and Chinese,
    each in a fresh process with an empty feature cache: its own CER line."""
    import subprocess
    cells, commands = [], []
    for i, overrides in enumerate(OCR_COLUMNS.values()):
        wait_for_quiet()
        args = [a for o in overrides for a in ("-o", o)]
        cache = ["-o", f"features.cache_dir={workdir / f'cache{i}'}"]
        out = subprocess.run([sys.executable, "-m", "bench", "features",
                              JOBS["ocr-engines"][0], *args, *cache], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        line = next(x for x in reversed(out.splitlines()) if x.strip().startswith("OCR (paddle)"))
        cells.append(line.split(":", 1)[1].strip().split(" (")[0])
        commands.append(f"`persrv-bench features {JOBS['ocr-engines'][0]} {' '.join(args)}`")
    return (f"| engine | {' | '.join(OCR_COLUMNS)} |\n|---|{'---|' * len(OCR_COLUMNS)}\n"
            f"| paddle | {' | '.join(cells)} |\n\n{' and '.join(commands)} (each with an "
            f"empty feature cache; on {machine_line()}).\n")


def run_job(name: str, workdir: Path) -> str:
    """Run one job with tracking off in ``workdir``; return its README block body."""
    if name == "fidelity":
        return fidelity_block()
    if name.startswith("calibrate-"):
        return calibrate_block(name, workdir)
    if name == "timings":
        return timings_block(workdir)
    if name == "scaling":
        return scaling_block(workdir)
    if name == "clip-lit":
        return clip_lit_block(workdir)
    if name == "clip-bounds":
        return clip_bounds_block(workdir)
    if name == "features-bench":
        return features_bench_block(workdir)
    if name == "features-graphs":
        return features_graphs_block(workdir)
    if name == "ocr-engines":
        return ocr_engines_block(workdir)
    from bench.config import load_config
    from bench.experiment import run_experiment
    config, overrides, seeds = JOBS[name]
    cfg = load_config(ROOT / config, overrides + ["report=false", "tracking.enabled=false"])
    t0 = time.perf_counter()
    quiet = lambda *_: None  # noqa: E731
    if seeds:
        from bench.experiment_seeds import format_seeds_table, run_seeds
        group = run_seeds(cfg, seeds, output_dir=workdir, echo=quiet)
        body = format_seeds_table(group.table, cfg.ks, seeds)
        what = f"mean ± sd over seeds {', '.join(map(str, seeds))}"
    else:
        outcome = run_experiment(cfg, output_dir=workdir, echo=quiet)
        body = metric_table(outcome.table, cfg.ks)
        what = f"seed {cfg.seed}"
    seconds = time.perf_counter() - t0
    return (f"{body}\n\n`persrv-bench run {config}"
            f"{' --seeds ' + ' '.join(map(str, seeds)) if seeds else ''}` ({what}; "
            f"{seconds:.0f} s wall, features cached or not as they were, on {machine_line()}).\n")


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(BLOCK_RE.format(name=re.escape(name)), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no block <!-- table:{name} --> ... <!-- /table:{name} -->")
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text)


def read_block(text: str, name: str) -> str | None:
    match = re.search(BLOCK_RE.format(name=re.escape(name)), text, re.S)
    return match.group(2) if match else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"blocks to regenerate (default: {list(JOBS)})")
    parser.add_argument("--check", action="store_true",
                        help="compare the tables (not the timing line) instead of writing")
    args = parser.parse_args(argv)
    names = args.names or [n for n in JOBS if n not in ON_REQUEST]
    if args.check:  # timings differ from machine to machine: nothing to compare
        names = [n for n in names if n not in ("timings", *ON_REQUEST)]
    text = README.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="persrv-readme-") as tmp:
        for name in names:
            print(f"running {name} ...", file=sys.stderr)
            body = run_job(name, Path(tmp) / name)
            if args.check:
                old = (read_block(text, name) or "").split("\n\n`persrv-bench")[0]
                same, why = tables_match(old, body.split("\n\n`persrv-bench")[0])
                if not same:
                    print(f"README block {name!r} differs from a fresh run ({why}):\n{body}")
                    return 1
            else:  # re-read: the README may have been edited while the job ran
                text = replace_block(README.read_text(encoding="utf-8"), name, body)
                README.write_text(text, encoding="utf-8")
                print(f"rewrote {name} in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
