"""Safe loading and no leaked secrets (issue 9).

- No code in ``bench/`` or ``baselines/`` deserialises with pickle-family loaders: no import of
  pickle/dill/cloudpickle/joblib/marshal/shelve, no ``torch.load`` without ``weights_only=True``,
  no ``allow_pickle=True``, no ``read_pickle``, no ``yaml.load`` without a safe Loader (nor
  ``yaml.unsafe_load``/``full_load``), no ``eval``/``exec``, no ``shell=True``/``os.system``.
  The scan is an AST walk over every source file; it is tested on snippets first, so a broken
  scanner cannot pass vacuously.
- Credentials in tracking/storage URLs are masked in messages, MLflow params and tags.
- Nothing in the repository binds a server to every interface (``0.0.0.0``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.tracking import flatten_params, mask_credentials

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("bench", "baselines")

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal",
                  "shelve"}
YAML_SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
YAML_UNSAFE = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain (other nodes: "")."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<snippet>") -> list[str]:
    """``"file:line: what"`` for every unsafe deserialisation / code execution in ``source``."""
    tree = ast.parse(source, filename=filename)
    found = []

    def hit(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    torch_load_names = {"torch.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    hit(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in PICKLE_MODULES:
                hit(node, f"from {node.module} import ...")
            for alias in node.names:
                if root == "torch" and alias.name == "load":
                    torch_load_names.add(alias.asname or "load")
                if root == "yaml" and alias.name in YAML_UNSAFE | {"load", "load_all"}:
                    hit(node, f"from yaml import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and _is_true(node.value):
            found.append(f"{filename}:{node.value.lineno}: allow_pickle=True")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        if name in torch_load_names and not _is_true(_kw(node, "weights_only")):
            hit(node, f"{name}(...) without weights_only=True")
        elif last == "read_pickle":
            hit(node, f"{name}(...)")
        elif name.startswith("yaml.") and last in YAML_UNSAFE:
            hit(node, f"{name}(...)")
        elif name.startswith("yaml.") and last in ("load", "load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in YAML_SAFE_LOADERS:
                hit(node, f"{name}(...) without a safe Loader (use yaml.safe_load)")
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            hit(node, f"{name}(...)")
        elif name in ("os.system", "os.popen"):
            hit(node, f"{name}(...)")
        elif _is_true(_kw(node, "shell")):
            hit(node, f"{name}(..., shell=True)")
    return found


def source_files() -> list[Path]:
    files = sorted(p for d in SCANNED for p in (REPO / d).rglob("*.py"))
    assert len(files) > 20, files  # the scan really looks at the code base
    return files


# ------------------------------------------------------------------- the scanner on snippets

@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.loads(b)",
    "from pickle import loads",
    "import joblib",
    "import dill as d",
    "import torch\ntorch.load(p)",
    "import torch\ntorch.load(p, map_location='cpu', weights_only=False)",
    "from torch import load\nload(p)",
    "from torch import load as tl\ntl(p, weights_only=False)",
    "import numpy as np\nnp.load(p, allow_pickle=True)",
    "import pandas as pd\npd.read_pickle(p)",
    "import yaml\nyaml.load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.load(text, yaml.UnsafeLoader)",
    "import yaml\nyaml.unsafe_load(text)",
    "import yaml\nyaml.full_load(text)",
    "from yaml import load",
    "eval('1 + 1')",
    "exec(code)",
    "import subprocess\nsubprocess.run(cmd, shell=True)",
    "import os\nos.system('ls')",
])
def test_scanner_finds_unsafe_snippets(snippet):
    assert unsafe_calls(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(p, map_location='cpu', weights_only=True)",
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)",
    "import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)",
    "model.eval()\nself.module.eval()",
    "import json\njson.loads(s)",
    "from safetensors.torch import load_file\nload_file(p)",
    "import subprocess\nsubprocess.run(['tesseract', f], shell=False)",
])
def test_scanner_accepts_safe_snippets(snippet):
    assert unsafe_calls(snippet) == []


# -------------------------------------------------------------------------- the code base

def test_no_unsafe_deserialisation_or_code_execution_in_the_code_base():
    found = []
    for path in source_files():
        found += unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert found == [], "unsafe calls:\n" + "\n".join(found)


def test_no_server_binds_every_interface():
    """Any server the harness (or its tests) starts binds 127.0.0.1, never 0.0.0.0."""
    me = Path(__file__).resolve()
    texts = [p for d in ("bench", "baselines", "tests", "experiments", "sweeps", ".ci")
             if (REPO / d).is_dir() for p in (REPO / d).rglob("*")
             if p.is_file() and p.suffix in (".py", ".yaml", ".yml", ".sh", ".toml", "")
             and p.resolve() != me and "__pycache__" not in p.parts]
    texts += [REPO / n for n in ("MLproject", "README.md", "pyproject.toml", "conda.yaml")
              if (REPO / n).is_file()]
    assert len(texts) > 20
    bad = [str(p.relative_to(REPO)) for p in texts
           if "0.0.0.0" in p.read_text(encoding="utf-8", errors="replace")]
    assert bad == []
    # the one server the tests start (PostgreSQL for sweep storage) listens on loopback only
    pg = REPO / "tests" / "pg.py"
    if pg.is_file():
        assert "listen_addresses=127.0.0.1" in pg.read_text(encoding="utf-8")


# ------------------------------------------------------------------------ credential masking

@pytest.mark.parametrize("raw, masked", [
    ("postgresql://user:pw@host/db", "postgresql://***@host/db"),
    ("postgresql+psycopg2://user:pw@host:5432/optuna?sslmode=require",
     "postgresql+psycopg2://***@host:5432/optuna?sslmode=require"),
    ("http://user:pw@host", "http://***@host"),
    ("https://user:pw@mlflow.example.org:5000/", "https://***@mlflow.example.org:5000/"),
    ("https://token@host/x", "https://***@host/x"),
    ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
    ("postgresql://user:pa/ss@host/db", "postgresql://***@host/db"),     # raw "/" in password
    ("postgresql://user:p@ss@host/db", "postgresql://***@host/db"),      # raw "@" in password
    ("postgresql://user:p%40ss@host/db", "postgresql://***@host/db"),
    ("postgresql://user:123/abc@host/db", "postgresql://***@host/db"),   # digits, then "/"
    ("http://host:5000/x?mail=a@b.org", "http://***@b.org"),  # ambiguous: masked, the safe side
    ("http://host/api?password=abc&x=1", "http://host/api?password=***&x=1"),
    ("http://host/api?x=1&access_token=abc", "http://host/api?x=1&access_token=***"),
    ("mysql://u:p@h/db?PASSWORD=z", "mysql://***@h/db?PASSWORD=***"),
    ("failed: http://u:p@h1:5000/api and postgresql://v:q@h2/db",
     "failed: http://***@h1:5000/api and postgresql://***@h2/db"),
    ("{'storage': 'postgresql://u:pw@h/db', 'mail': 'a@b.org'}",
     "{'storage': 'postgresql://***@h/db', 'mail': 'a@b.org'}"),
])
def test_mask_credentials(raw, masked):
    assert mask_credentials(raw) == masked


@pytest.mark.parametrize("raw", [
    "http://127.0.0.1:5000", "http://localhost:5000/", "sqlite:////tmp/mlflow.db",
    "file:///tmp/mlruns", "http://host/x?email=a@b.org", "plain text, a@b.org",
])
def test_mask_credentials_leaves_urls_without_credentials_alone(raw):
    assert mask_credentials(raw) == raw


def test_flatten_params_masks_nested_urls_and_secret_names():
    params = flatten_params({
        "config": {"tracking": {"uri": "http://u:s3cret@mlflow:5000"},
                   "sweep": {"storage": "postgresql://optuna:s3cret@db/optuna",
                             "password": "s3cret", "db_password": "s3cret"},
                   "hf_token": "s3cret", "max_new_tokens": 32, "pad_token": "<pad>"},
        "retrievers": ["postgresql://a:s3cret@h/x"],
    })
    assert "s3cret" not in " ".join(params.values())
    assert params["config.tracking.uri"] == "http://***@mlflow:5000"
    assert params["config.sweep.storage"] == "postgresql://***@db/optuna"
    assert params["config.sweep.password"] == "***" and params["config.hf_token"] == "***"
    assert params["config.max_new_tokens"] == "32" and params["config.pad_token"] == "<pad>"


def test_credentials_masked_in_mlflow_params_and_tags(tmp_path):
    from mlflow.tracking import MlflowClient

    from bench.tracking import Tracker
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    run = tracker.start_run("masking", "r", tags={"storage": "postgresql://u:s3cret@h/db"})
    tracker.log_params(run, {"sweep": {"storage": "postgresql://u:s3cret@h/db",
                                       "password": "s3cret"}})
    tracker.set_tags(run, {"note": "server http://u:s3cret@h:5000 went away"})
    data = MlflowClient(uri).get_run(run).data
    assert data.params == {"sweep.storage": "postgresql://***@h/db", "sweep.password": "***"}
    assert data.tags["storage"] == "postgresql://***@h/db"
    assert data.tags["note"] == "server http://***@h:5000 went away"


def test_tracking_failure_messages_are_masked(tmp_path):
    from bench.tracking.benchmark import safe_tracker as _safe_tracker, tracking_lost as _tracking_lost
    lines: list[str] = []
    _tracking_lost(ConnectionError("POST http://u:s3cret@h:5000/api/2.0/runs failed"), tmp_path,
                   lines.append)
    assert "s3cret" not in lines[0] and "http://***@h:5000/api" in lines[0]
    tracker = _safe_tracker("unknownscheme://u:s3cret@h/x", lines.append)
    assert all("s3cret" not in line for line in lines)
    assert tracker is not None
