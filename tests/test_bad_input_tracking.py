"""Bad input, tracking (bench/tracking): credentials are never written or printed: either a one-
line error that names the input (exit 2, no traceback) or the input is handled and what was
skipped is counted (issue 9; split from tests/test_bad_input.py by area in issue 25)."""

from __future__ import annotations

from conftest import run_main

from bad_input_helpers import write_config


# --------------------------------------------------------------------------------- secrets

def test_resolved_config_yaml_masks_tracking_credentials(tiny_dataset, tmp_path, capsys,
                                                         isolated_cache):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path,
                       tracking={"enabled": False, "uri": "http://alice:s3cret@mlflow:5000"})
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    written = next((tmp_path / "out").glob("*/config.yaml")).read_text(encoding="utf-8")
    assert "s3cret" not in written and "http://***@mlflow:5000" in written
    assert "s3cret" not in out + err


def test_mlflow_view_run_lines_never_print_credentials(tmp_path, monkeypatch, capsys):
    """MLflow's own "🏃 View run ... at: <url>" lines (printed when a run ends on an HTTP
    server) are silenced when the URI holds credentials."""
    from mlflow.entities import Run, RunData, RunInfo

    from bench.tracking import Tracker
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    tracker = Tracker("http://alice:s3cret@127.0.0.1:9")
    service = tracker.client._tracking_client
    info = RunInfo(run_id="r1", experiment_id="1", user_id="u", status="RUNNING",
                   start_time=0, end_time=None, lifecycle_stage="active", run_name="demo")
    monkeypatch.setattr(service.store, "get_run", lambda run_id: Run(info, RunData()))
    capsys.readouterr()
    service._log_url("r1")
    out = capsys.readouterr().out
    assert "s3cret" not in out and "View run" not in out
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    plain = Tracker("http://127.0.0.1:9")  # no credentials: MLflow's link stays
    monkeypatch.setattr(plain.client._tracking_client.store, "get_run",
                        lambda run_id: Run(info, RunData()))
    plain.client._tracking_client._log_url("r1")
    assert "View run demo at: http://127.0.0.1:9/#/experiments/1/runs/r1" in \
        capsys.readouterr().out
