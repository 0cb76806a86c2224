"""The evaluation ledger: how many times each dataset fingerprint's splits were evaluated on
this machine (issue 22, test touched once). ``run`` counts every evaluation, prints the test
count and tags the parent run with it; the report lists it."""

from __future__ import annotations

from pathlib import Path

#: The ledger of evaluations per dataset fingerprint (in :func:`ledger_dir`).
LEDGER = "evaluations.json"


def ledger_dir() -> Path:
    """Where the evaluation ledger lives: the harness's cache folder (``$PERSRV_BENCH_CACHE`` or
    the user cache dir), so every run of a dataset on this machine counts, whatever its
    ``output_dir`` — and no file sits among the run folders."""
    from bench.features.cache import datasets_cache_dir
    return datasets_cache_dir().parent


def record_evaluation(root: Path, fingerprint: str, split: str) -> int:
    """Count this evaluation in ``root/evaluations.json`` (per dataset fingerprint and split,
    under a file lock); returns how many evaluations of ``split`` the fingerprint has had,
    this one included."""
    import json

    from filelock import FileLock

    from bench.data.format import write_json_atomic
    root.mkdir(parents=True, exist_ok=True)
    path = root / LEDGER
    with FileLock(str(path) + ".lock", timeout=60):
        try:
            ledger = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, ValueError):
            ledger = {}
        counts = ledger.setdefault(str(fingerprint), {})
        counts[split] = int(counts.get(split, 0)) + 1
        write_json_atomic(path, ledger)
    return counts[split]


def evaluations_of(root: Path, fingerprint: str) -> dict[str, int]:
    """Evaluations per split recorded for a dataset fingerprint under ``root`` ({} if none)."""
    import json
    try:
        return dict(json.loads((root / LEDGER).read_text(encoding="utf-8")).get(fingerprint, {}))
    except (OSError, ValueError, AttributeError):
        return {}
