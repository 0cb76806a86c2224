"""Evaluation from files: a TREC run, TREC qrels and an optional requests (users) file.

The same metric code as the runner (:mod:`bench.metrics`); the runner writes ``qrels`` and
``requests.tsv`` next to ``run.trec`` with :func:`write_qrels` / :func:`write_users`, so any saved
run can be re-scored with ``persrv-bench evaluate``.

Formats (whitespace-separated; blank lines and ``#`` comment lines are skipped):

- run: ``qid Q0 docid rank score tag``. Each query's lines are ordered by score descending, ties
  by rank ascending. (trec_eval ignores the rank field and breaks ties by docno; we use rank so that
  a saved run, whose scores are rounded to 6 decimals, evaluates exactly as the in-memory one.)
- qrels: ``qid 0 docid rel``; rel > 0 is relevant. A qid with no relevant docid is not a request
  (as in trec_eval).
- users: ``qid<TAB>user_id[<TAB>query]`` with an optional header line ``qid<TAB>user_id...``.

Queries in the run but not in the qrels are ignored (counted as ``n_run_only``); qrels queries
without run lines score 0 (counted as ``n_without_run``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from bench.errors import DatasetError
from bench.metrics import DEFAULT_KS, METRICS, aggregate, metric_name, per_request

if TYPE_CHECKING:  # pragma: no cover
    from bench.data.splits import Requests
    from bench.retrieval import Request

log = logging.getLogger(__name__)
RUN_FIELDS = ("qid", "Q0", "docid", "rank", "score", "tag")
QRELS_FIELDS = ("qid", "iter", "docid", "rel")
USERS_HEADER = ("qid", "user_id")


def _line_error(path: Path, lineno: int, message: str, field: str | None = None) -> DatasetError:
    where = f"line {lineno}" + (f", field {field!r}" if field else "")
    err = DatasetError(f"{where}: {message}", file=str(path))
    err.row, err.column = lineno, field
    return err


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError("file is missing or not a regular file", file=str(path))
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if lineno == 1 and line.startswith("\ufeff"):  # a UTF-8 byte-order mark
                    log.warning("%s starts with a UTF-8 byte-order mark (BOM); ignored", path)
                    line = line[1:]
                stripped = line.strip()
                if stripped and not stripped.startswith("#"):
                    yield lineno, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc})", file=str(path)) from None


def _fields(path: Path, lineno: int, line: str, names: tuple[str, ...]) -> list[str]:
    parts = line.split()
    if len(parts) != len(names):
        raise _line_error(path, lineno, f"expected {len(names)} fields ({' '.join(names)}), "
                          f"got {len(parts)}: {line.strip()!r}")
    return parts


#: What a number in a TREC file may look like: ASCII digits, optional sign, decimal point and
#: exponent (``12``, ``-0.5``, ``1e-3``), or an ASCII infinity for a score. Python's own
#: ``float()``/``int()`` also take ``1_000``, full-width digits and ``nan``: refused here.
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z|"
                       r"[+-]?(?i:inf|infinity)\Z")


def _number(path: Path, lineno: int, value: str, field: str, kind: type) -> float:
    pattern = _INT_RE if kind is int else _FLOAT_RE
    if not pattern.match(value):
        raise _line_error(path, lineno, f"expected {'an integer' if kind is int else 'a number'}"
                          f" (ASCII digits), got {value!r}", field)
    return kind(value)


def read_trec_run(path: str | Path) -> dict[str, list[str]]:
    """Read a TREC run: qid -> docids best first (score desc, then rank asc), in first-seen qid
    order. Malformed lines raise :class:`DatasetError` naming the file, line and field."""
    path = Path(path)
    entries: dict[str, list[tuple[float, int, str]]] = {}
    for lineno, line in _lines(path):
        qid, _, docid, rank, score, _ = _fields(path, lineno, line, RUN_FIELDS)
        entries.setdefault(qid, []).append((-_number(path, lineno, score, "score", float),
                                            _number(path, lineno, rank, "rank", int), docid))
    return {qid: [doc for _, _, doc in sorted(rows, key=lambda t: (t[0], t[1]))]
            for qid, rows in entries.items()}


def read_qrels(path: str | Path) -> dict[str, set[str]]:
    """Read TREC qrels: qid -> relevant docids (rel > 0); qids without any are left out."""
    path = Path(path)
    relevant: dict[str, set[str]] = {}
    for lineno, line in _lines(path):
        qid, _, docid, rel = _fields(path, lineno, line, QRELS_FIELDS)
        if _number(path, lineno, rel, "rel", float) > 0:
            relevant.setdefault(qid, set()).add(docid)
    return relevant


def read_users(path: str | Path) -> dict[str, str]:
    """Read a requests file: qid -> user_id (tab-separated ``qid user_id [query]``)."""
    path = Path(path)
    users: dict[str, str] = {}
    for lineno, line in _lines(path):
        parts = line.split("\t")
        if tuple(p.strip() for p in parts[:2]) == USERS_HEADER:
            continue
        if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
            raise _line_error(path, lineno, f"expected tab-separated qid and user_id, got "
                              f"{line.strip()!r}")
        qid, user = parts[0].strip(), parts[1].strip()
        if users.get(qid, user) != user:
            raise _line_error(path, lineno, f"qid {qid!r} already has user {users[qid]!r}",
                              "user_id")
        users[qid] = user
    return users


def evaluate_files(run_path: str | Path, qrels_path: str | Path,
                   users_path: str | Path | None = None,
                   ks: Iterable[int] = DEFAULT_KS) -> dict:
    """Score a TREC run against qrels; without ``users_path`` each qid is its own user.

    Returns a JSON-ready dict: ``macro`` and ``micro`` ({metric_at_k: value}), ``ks``,
    ``n_requests``, ``n_users``, ``n_run_only`` (run qids not in the qrels, ignored) and
    ``n_without_run`` (qrels qids the run lacks, scored 0).
    """
    ks = sorted({int(k) for k in ks})
    rankings = read_trec_run(run_path)
    if not rankings:
        log.warning("%s holds no ranked results: every request scores 0", run_path)
    relevant = read_qrels(qrels_path)
    if not relevant:
        raise DatasetError("no relevant judgements (no line with rel > 0)", file=str(qrels_path))
    users = None
    if users_path is not None:
        users = read_users(users_path)
        missing = [q for q in relevant if q not in users]
        if missing:
            raise DatasetError(f"{len(missing)} qrels queries have no user here "
                               f"(first: {missing[0]!r})", file=str(users_path), column="qid")
    df = per_request(rankings, relevant, users, ks)
    return {
        "macro": aggregate(df, "macro"),
        "micro": aggregate(df, "micro"),
        "ks": ks,
        "n_requests": int(len(df)),
        "n_users": int(df["user_id"].nunique()),
        "n_run_only": sum(1 for q in rankings if q not in relevant),
        "n_without_run": sum(1 for q in relevant if q not in rankings),
    }


def format_table(result: dict) -> str:
    """A plain-text table of an :func:`evaluate_files` result: one row per metric, one column per
    k, macro (reported) then micro, and the counts."""
    ks = result["ks"]
    lines = []
    for how in ("macro", "micro"):
        values = result[how]
        header = f"{how:<8}" + "".join(f"{'@' + str(k):>9}" for k in ks)
        lines += [header, "-" * len(header)]
        for m in METRICS:
            lines.append(f"{m:<8}" + "".join(f"{values[metric_name(m, k)]:>9.4f}" for k in ks))
        lines.append("")
    lines.append(f"requests {result['n_requests']}, users {result['n_users']}, "
                 f"run-only queries ignored {result['n_run_only']}, "
                 f"queries without run lines {result['n_without_run']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- writing

def _check_token(value: str, what: str, allow_space: bool = False) -> str:
    bad = (lambda s: "\t" in s or "\n" in s or "\r" in s) if allow_space else \
        (lambda s: not s or any(ch.isspace() for ch in s))
    if bad(value):
        raise DatasetError(f"{what} {value!r} is empty or contains whitespace; it cannot be "
                           "written to a TREC/TSV file")
    return value


def write_qrels(requests: "Requests", path: str | Path,
                qids: dict["Request", str] | None = None) -> Path:
    """Write TREC qrels (``qid 0 sticker_id 1``, sticker ids sorted) for ``requests``."""
    path = Path(path)
    qids = qids or requests.qids
    with open(path, "w", encoding="utf-8") as fh:
        for req in requests.requests:
            qid = _check_token(qids[req], "qid")
            for sid in sorted(requests.relevant[req]):
                fh.write(f"{qid} 0 {_check_token(sid, 'sticker id')} 1\n")
    return path


def write_users(requests: "Requests", path: str | Path,
                qids: dict["Request", str] | None = None) -> Path:
    """Write the requests file ``qid<TAB>user_id<TAB>query`` with a header line; tabs and line
    breaks inside a query are written as spaces."""
    path = Path(path)
    qids = qids or requests.qids
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("qid\tuser_id\tquery\n")
        for req in requests.requests:
            query = " ".join(req.query.replace("\t", " ").splitlines())
            fh.write(f"{_check_token(qids[req], 'qid')}\t"
                     f"{_check_token(req.user_id, 'user id', allow_space=True)}\t{query}\n")
    return path
