"""Issue 26, class 1: one credential mask over every output path (bench/secrets.py).

Hostile passwords (quotes, ``<>``, spaces, ``@``, ``:``, percent-encoded or not) are parsed the way
SQLAlchemy and urllib parse them and never printed; a planted secret in ``--tracking-uri``,
``--storage`` and a plugin retriever's ``api_token`` is absent from every file a run, a sweep and a
failing run write, and from their stdout/stderr and logs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import pytest
import yaml

from conftest import run_main

from bench.params import Configurable, RetrieverParams, param
from bench.registry import register
from bench.retrieval import Request, Run, TrainView
from bench.secrets import (is_secret_name, mask_credentials, mask_tree, register_secret,
                           safe_text, url_passwords)

HOSTILE = ["p'w\"d<x>y", "pa ss word", "p@ss:w/rd!", "a%40b%3Ac", "x#y?z&w=1", "żółw密码Ω",
           "back\\slash", "<script>", "semi;colon$(id)", "tab\there", "100%sure"]


@pytest.mark.parametrize("password", HOSTILE)
@pytest.mark.parametrize("encode", [False, True])
def test_hostile_passwords_are_masked_however_sqlalchemy_reads_them(password, encode):
    from sqlalchemy.engine import make_url
    raw = quote(password, safe="") if encode else password
    url = f"postgresql+psycopg2://alice:{raw}@db.example.org:5432/optuna?sslmode=require"
    try:
        parsed = make_url(url).password
    except Exception:  # SQLAlchemy refuses it: our parser must still find the raw form
        parsed = None
    assert raw in url_passwords(url)
    masked = mask_credentials(url)
    for secret in {raw, password, parsed} - {None}:
        assert secret not in masked, (url, masked)
        # the registered secret is gone from any later text, quoted or repr'd
        for later in (f"could not connect: {secret}", repr({"storage": url}),
                      f"'{secret}' in {url!r}"):
            assert secret not in mask_credentials(later)
    assert "db.example.org" in masked and "sslmode=require" in masked


def test_unregistered_urls_keep_their_host_and_plain_text():
    assert mask_credentials("see http://u:zz'z@h:5000/x for details") == \
        "see http://***@h:5000/x for details"
    assert mask_credentials("mail a@b.org, http://host/x") == "mail a@b.org, http://host/x"


@pytest.mark.parametrize("name,secret", [
    ("api_token", True), ("password", True), ("secret", True), ("key", True),
    ("db_password", True), ("aws.secret_key", True), ("openai_api_key", True),
    ("hf_token", True), ("credentials", True),
    ("max_tokens", False), ("pad_token", False), ("sort_order", False), ("tokenizer", False),
    ("keywords", False), ("n_keys", False),
])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_mask_tree_masks_secret_names_and_registers_their_values():
    tree = {"retrievers": [{"name": "x", "params": {"api_token": "tok-9f8e7d", "alpha": 0.5}}],
            "tracking": {"uri": "http://u:hunter2x@h:5000"}}
    out = mask_tree(tree)
    assert out["retrievers"][0]["params"] == {"api_token": "***", "alpha": 0.5}
    assert out["tracking"]["uri"] == "http://***@h:5000"
    assert tree["retrievers"][0]["params"]["api_token"] == "tok-9f8e7d"  # a copy
    assert mask_credentials("fit failed: bad token tok-9f8e7d") == "fit failed: bad token ***"


def test_log_records_of_every_logger_are_masked(caplog):
    from bench.secrets import install_log_masking
    install_log_masking()
    register_secret("zebra-s3cr3t")
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").warning("connecting with %s", "zebra-s3cr3t")
        try:
            raise ValueError("bad password zebra-s3cr3t")
        except ValueError:
            logging.getLogger("mlflow.store").exception("failed")
    assert "zebra-s3cr3t" not in caplog.text
    assert "connecting with ***" in caplog.text and "bad password ***" in caplog.text


def test_safe_text_escapes_control_characters():
    assert safe_text("run\x1b[2J\rFAKE: all tests passed\n") == \
        "run\\x1b[2J\\x0dFAKE: all tests passed\\x0a"
    assert safe_text("漢字 ok\u202eevil") == "漢字 ok\\u202eevil"
    assert safe_text("a\nb\tc", keep_newlines=True) == "a\nb\tc"


# ------------------------------------------------------------------ end to end: grep everything

TOKEN = "tok'<9Q> zz@:x"      # the plugin's api_token: quotes, <>, space, @ and :
DBPASS = "pg\"S3 cr%t"         # a --storage password
URIPASS = "ml'Pw <x>@y"        # a --tracking-uri password


@register("token-plugin")
class TokenPlugin(Configurable):
    """A plugin retriever that needs an API token (ranks stickers by id)."""

    name = "token-plugin"

    class Params(RetrieverParams):
        api_token: str = param("", refit="fit", description="service token")
        alpha: float = param(0.5, ge=0, le=1, refit="search", description="unused weight")
        fail: bool = param(False, refit="fit", description="raise in fit")

    def fit(self, train: TrainView) -> "TokenPlugin":
        if self.fail:
            raise RuntimeError(f"service refused token {self.api_token}")
        self.ids_ = sorted(train.stickers["sticker_id"].astype(str))
        return self

    def search(self, requests: Sequence[Request], k: int) -> Run:
        run = Run(name=self.name)
        for r in requests:
            run[r] = [(sid, 1.0 / i) for i, sid in enumerate(self.ids_[:k], start=1)]
        return run


def _forms(secret: str) -> set[str]:
    import json
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], repr(secret)[1:-1],
            secret.replace("'", "''")}


def _assert_nowhere(secrets: list[str], roots: list[Path], texts: list[str],
                    inputs: tuple[str, ...] = ("exp.yaml", "space.yaml")) -> None:
    """No file under ``roots`` (the test's own input files aside) and no text holds a secret."""
    forms = set().union(*(_forms(s) for s in secrets))
    checked = 0
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and path.name not in inputs:
                data = path.read_bytes()
                checked += 1
                for form in forms:
                    assert form.encode() not in data, f"{form!r} found in {path}"
    for text in texts:
        for form in forms:
            assert form not in text, f"{form!r} found in output:\n{text[-2000:]}"
    assert checked > 3  # the run really wrote files


def _config(tmp_path: Path, dataset: Path, **params) -> Path:
    cfg = {"name": "leak", "dataset": {"path": str(dataset)}, "ks": [1, 5],
           "retrievers": [{"name": "token-plugin", "params": {"api_token": TOKEN, **params}}],
           "features": {"ocr": False}, "output_dir": str(tmp_path / "out"), "report": True}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSRV_BENCH_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path / "logs"


def test_run_writes_the_token_nowhere(tiny_dataset, tmp_path, isolated_cache, capsys, caplog,
                                      log_dir):
    config = _config(tmp_path, tiny_dataset)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with caplog.at_level(logging.INFO):
        code, out, err = run_main(capsys, "run", str(config), "--tracking-uri", uri)
    assert code == 0, err
    folder = next((tmp_path / "out").iterdir())
    saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert saved["retrievers"][0]["params"]["api_token"] == "***"
    assert (tmp_path / "mlruns").is_dir() and (tmp_path / "mlflow.db").is_file()
    _assert_nowhere([TOKEN], [tmp_path / "out", tmp_path / "mlruns", tmp_path / "mlflow.db"],
                    [out, err, caplog.text])


def test_failing_retriever_writes_the_token_nowhere(tiny_dataset, tmp_path, isolated_cache,
                                                    capsys, caplog, log_dir):
    config = _config(tmp_path, tiny_dataset, fail=True)
    with caplog.at_level(logging.INFO):
        code, out, err = run_main(capsys, "run", str(config), "--no-tracking")
    assert code == 1 and "service refused token ***" in err
    _assert_nowhere([TOKEN], [tmp_path / "out"], [out, err, caplog.text])


def test_failing_run_and_sweep_write_the_passwords_nowhere(tiny_dataset, tmp_path,
                                                           isolated_cache, capsys, caplog,
                                                           log_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_dataset)
    dead = f"http://mlflow:{quote(URIPASS, safe='')}@127.0.0.1:9/"
    raw_dead = f"http://mlflow:{URIPASS}@127.0.0.1:9/"
    with caplog.at_level(logging.INFO):
        code, out, err = run_main(capsys, "--debug", "run", str(config), "--tracking-uri", dead)
        code2, out2, err2 = run_main(capsys, "run", str(config), "--tracking-uri", raw_dead)
    assert code == 2 and "unreachable" in err and "Traceback" in err  # --debug prints it
    assert code2 == 2 and "unreachable" in err2 and "Traceback" not in err2
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"retriever": "token-plugin", "metric": "m_mrr", "k": 5,
                                     "params": {"alpha": {"float": [0.0, 1.0]}}}))
    storage = f"postgresql://optuna:{DBPASS}@127.0.0.1:9/optuna"
    with caplog.at_level(logging.INFO):
        code3, out3, err3 = run_main(capsys, "sweep", str(space), "--experiment", str(config),
                                     "--storage", storage, "--n-trials", "1", "--no-tracking")
    assert code3 == 2 and err3.startswith("error:") and len(err3.strip().splitlines()) == 1
    _assert_nowhere([URIPASS, DBPASS, TOKEN], [tmp_path], [out, err, out2, err2, out3, err3,
                                                           caplog.text])


def test_sweep_writes_the_token_nowhere(tiny_dataset, tmp_path, isolated_cache, capsys, caplog,
                                        log_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_dataset)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"retriever": "token-plugin", "metric": "m_mrr", "k": 5,
                                     "params": {"alpha": {"float": [0.0, 1.0]}}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with caplog.at_level(logging.INFO):
        code, out, err = run_main(capsys, "sweep", str(space), "--experiment", str(config),
                                  "--n-trials", "2", "--tracking-uri", uri,
                                  "--storage", str(tmp_path / "journal.log"))
    assert code == 0, err
    assert (tmp_path / "journal.log").is_file() and (tmp_path / "mlflow.db").is_file()
    _assert_nowhere([TOKEN], [tmp_path / "out", tmp_path / "journal.log", tmp_path / "mlruns",
                              tmp_path / "mlflow.db"], [out, err, caplog.text])
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")  # the tracker bounded retries
