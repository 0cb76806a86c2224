"""Reports for papers: macro means with bootstrap CIs, paired tests with Holm correction,
segment breakdowns, markdown/HTML/LaTeX tables and plots, fetching runs from MLflow.

Modules (one-way: names <- folder <- stats <- tables/plots/html <- build; fetch uses names only):
``names`` (errors, metric and segment names), ``folder`` (reading a run folder, breakdowns),
``stats`` (CIs, tests, Holm), ``tables`` (the runner's results table and the report's grids),
``plots``, ``html`` (self-contained report.html), ``build`` (report_folder, compare_folders),
``fetch`` (MLflow -> run folder).
"""

from bench.report.build import compare_folders, report_folder
from bench.report.fetch import fetch_run, read_parent_run
from bench.report.names import ReportError, RunNotFoundError

__all__ = ["ReportError", "RunNotFoundError", "compare_folders", "fetch_run", "read_parent_run",
           "report_folder"]
