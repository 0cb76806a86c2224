"""A retriever is one file (bench/registry.py): every module of ``baselines/`` is found without
listing it anywhere, and a user's plugin folder ($PERSRV_BENCH_PLUGINS) adds retrievers that run
in an experiment like the built-in ones. The README's worked example is
examples/plugins/caption_match.py, run here from a temporary folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import registry
from bench.errors import ConfigError
from tests.conftest import make_tiny_frames

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "caption_match.py"


def test_every_baselines_module_is_discovered_without_init_imports():
    import ast
    import pkgutil

    import baselines
    tree = ast.parse(Path(baselines.__file__).read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = registry.registry()
    modules = [m.name for m in pkgutil.iter_modules(baselines.__path__)]
    assert all(f"baselines.{m}" in sys.modules for m in modules)
    assert {"query-lookup", "user-history", "popularity", "dense-clip", "persrv-reference"} <= \
        set(names)


def _upper_case_dataset(root: Path) -> Path:
    """The tiny dataset with UPPER-CASE captions (as rendered stickers read by OCR), so only a
    case-normalising retriever matches the lower-case queries."""
    from bench.data.format import write_dataset
    stickers, clicks = make_tiny_frames()
    stickers["text"] = stickers["text"].str.upper() + "!"
    write_dataset(root, stickers, clicks, {"name": "tiny-upper", "source": "test",
                                           "license": "CC0"})
    return root


def test_one_file_plugin_folder_runs_in_an_experiment(tmp_path, isolated_cache, monkeypatch):
    from bench.config import validate_config
    from bench.experiment import run_experiment
    folder = tmp_path / "my plugins"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "caption_match.py")
    (folder / "_helper.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.setenv(registry.PLUGINS_ENV, str(folder))
    data = _upper_case_dataset(tmp_path / "tiny-upper")
    cfg = validate_config({
        "name": "plugin-run", "seed": 0, "dataset": {"path": str(data)},
        "retrievers": [{"name": "caption-match", "params": {"field": "text"}},
                       {"name": "random", "params": {"seed": 0}}],
        "features": {"ocr": False, "encoder": None}, "output_dir": str(tmp_path / "out"),
        "report": False, "tracking": {"enabled": False}})
    outcome = run_experiment(cfg, echo=lambda *_: None)
    assert not outcome.failed
    scores = outcome.table.set_index("retriever")["m_mrr_at_20"]
    assert scores["caption-match"] > 0.3 and scores["caption-match"] > scores["random"]
    per_request = pd.read_parquet(outcome.folder / "retrievers" / "caption-match" /
                                  "per_request.parquet")
    assert (per_request["m_mrr_at_20"] > 0).mean() > 0.5
    trec = (outcome.folder / "retrievers" / "caption-match" / "run.trec").read_text().split("\n")
    assert any(" caption-match" in line for line in trec)
    # what it found is a case-insensitive match: a "so sad" request ranks a SAD sticker first
    cls = registry.get_retriever_class("caption-match")
    from bench.retrieval import Request, leak_safe_view
    stickers, clicks = make_tiny_frames()
    stickers["text"] = stickers["text"].str.upper()
    fitted = cls(field="text").fit(leak_safe_view(stickers, clicks))
    run = fitted.search([Request("u0", "So Sad")], k=3)
    assert run.ids(Request("u0", "So Sad"))[0].startswith("sad-")


def test_plugin_folder_errors_name_the_folder_or_file(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="nowhere"):
        registry.load_plugins([missing])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match=r"broken\.py failed to import: ModuleNotFoundError"):
        registry.load_plugins([bad])
    (bad / "broken.py").write_text(
        "from bench.registry import register\n\n@register('fixed-plugin')\nclass Fixed:\n"
        "    pass\n")
    # a folder that failed can be loaded once fixed (the failure is not remembered)
    monkeypatch.setenv(registry.PLUGINS_ENV, str(bad))
    assert "fixed-plugin" in registry.registry()


def test_plugins_key_of_a_config_loads_its_folder(tmp_path, tiny_dataset, isolated_cache):
    """`plugins:` in the config (relative to it) finds a one-file retriever before names are
    checked, and the run uses it."""
    import yaml

    from bench.config import load_config
    from bench.experiment import run_experiment
    folder = tmp_path / "cfgdir" / "my_plugins"
    folder.mkdir(parents=True)
    (folder / "first_sticker.py").write_text(
        "from bench.params import Configurable, RetrieverParams\n"
        "from bench.registry import register\n"
        "from bench.retrieval import Run\n\n"
        "@register('first-sticker-cfg')\n"
        "class FirstSticker(Configurable):\n"
        "    class Params(RetrieverParams):\n"
        "        pass\n"
        "    def fit(self, train):\n"
        "        self.ids_ = train.sticker_ids\n"
        "        return self\n"
        "    def search(self, requests, k):\n"
        "        return Run({r: [(self.ids_[0], 1.0)] for r in requests})\n", encoding="utf-8")
    config = tmp_path / "cfgdir" / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "plug", "dataset": {"path": str(tiny_dataset)}, "plugins": ["my_plugins"],
        "retrievers": [{"name": "first-sticker-cfg"}], "features": {"ocr": False,
                                                                     "encoder": None},
        "output_dir": str(tmp_path / "out"), "report": False,
        "tracking": {"enabled": False}}), encoding="utf-8")
    cfg = load_config(config)
    outcome = run_experiment(cfg, echo=lambda *_: None)
    assert not outcome.failed
    assert outcome.table.loc[0, "coverage"] < 1.0   # one sticker of its own, the rest filled
