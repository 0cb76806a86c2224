"""``persrv-bench evaluate``: score a TREC run file against qrels (macro over users, and micro)."""

from __future__ import annotations

import json
import re

import click

DEFAULT_KS = (1, 5, 10, 20)  # same as bench.metrics.DEFAULT_KS, kept here to import nothing heavy
_INT = re.compile(r"^\d+$")


class _GreedyKCommand(click.Command):
    """Lets ``--k 1 5 10 20`` stand for ``--k 1 --k 5 --k 10 --k 20`` (click options take one
    value each; this rewrites the arguments before click parses them)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            out.append(arg)
            i += 1
            if arg == "--":
                out.extend(args[i:])
                break
            if arg == "--k":
                first = True
                while i < len(args) and (first or _INT.match(args[i])):
                    if not first:
                        out.append("--k")
                    out.append(args[i])
                    first = False
                    i += 1
        return super().parse_args(ctx, out)


@click.command("evaluate", cls=_GreedyKCommand)
@click.option("--run", "run_path", required=True, type=click.Path(dir_okay=False),
              help="TREC run file (qid Q0 docid rank score tag).")
@click.option("--qrels", "qrels_path", required=True, type=click.Path(dir_okay=False),
              help="TREC qrels file (qid 0 docid rel).")
@click.option("--users", "users_path", type=click.Path(dir_okay=False), default=None,
              help="Requests file (qid<TAB>user_id[<TAB>query]); without it each query is its "
                   "own user.")
@click.option("--k", "ks", type=click.IntRange(min=1), multiple=True,
              help="Cutoffs, e.g. --k 1 5 10 20 (the default).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: macro metrics at top level, 'micro', and counts.")
def evaluate(run_path: str, qrels_path: str, users_path: str | None, ks: tuple[int, ...],
             as_json: bool) -> None:
    """Score a TREC run against qrels: M-MRR, MRR, Recall, NDCG at each k, averaged per user
    then over users (macro, the reported figure) and over requests (micro)."""
    from bench.evaluate import evaluate_files, format_table

    result = evaluate_files(run_path, qrels_path, users_path, ks or DEFAULT_KS)
    if as_json:
        payload = dict(result["macro"])
        payload["micro"] = result["micro"]
        payload.update({key: result[key] for key in
                        ("ks", "n_requests", "n_users", "n_run_only", "n_without_run")})
        click.echo(json.dumps(payload, sort_keys=False))
    else:
        click.echo(format_table(result))
