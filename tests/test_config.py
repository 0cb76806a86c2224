import pytest

from bench.config import apply_overrides, load_config, validate_config
from bench.errors import ConfigError

BASE = {
    "name": "t",
    "dataset": {"path": "x"},
    "retrievers": [{"name": "bm25"}, {"name": "random", "params": {"seed": 1}}],
}


def test_valid_config_defaults():
    cfg = validate_config(BASE)
    assert cfg.ks == [1, 5, 10, 20]
    assert cfg.depth == 20
    assert [r.display for r in cfg.retrievers] == ["bm25", "random"]


def test_unknown_key_is_named():
    raw = {**BASE, "retrievers": [{"name": "bm25", "parms": {}}]}
    with pytest.raises(ConfigError, match=r"unknown key 'retrievers\.0\.parms'"):
        validate_config(raw)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'seed'.*got 'abc'"):
        validate_config({**BASE, "seed": "abc"})


def test_top_level_typo_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'retriever'"):
        validate_config({"dataset": {"path": "x"}, "retriever": [], "retrievers": []})


def test_duplicate_labels_rejected():
    raw = {**BASE, "retrievers": [{"name": "bm25"}, {"name": "bm25"}]}
    with pytest.raises(ConfigError, match="labelled 'bm25'"):
        validate_config(raw)


def test_overrides_nested_and_list_items():
    raw = {"dataset": {"params": {"n": 1}}, "retrievers": [{"name": "a", "params": {}}]}
    apply_overrides(raw, ["dataset.params.n=500", "retrievers.0.params.k1=1.5", "seed=7",
                          "ks=[1,3]"])
    assert raw["dataset"]["params"]["n"] == 500
    assert raw["retrievers"][0]["params"]["k1"] == 1.5
    assert raw["seed"] == 7 and raw["ks"] == [1, 3]
    with pytest.raises(ConfigError, match="no list item '5'"):
        apply_overrides(raw, ["retrievers.5.name=x"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(raw, ["novalue"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_relative_source_resolves_against_config_parent(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "experiments").mkdir()
    cfg_file = tmp_path / "experiments" / "c.yaml"
    cfg_file.write_text("dataset: {path: data}\nretrievers: [{name: random}]\n")
    monkeypatch.chdir(tmp_path / "experiments")
    cfg = load_config(cfg_file)
    assert cfg.dataset.path == str((tmp_path / "data").resolve())


def test_misspelt_keys_get_a_did_you_mean_at_every_level():
    from bench.config import validate_config
    from bench.errors import ConfigError
    base = {"dataset": {"path": "x"}, "retrievers": [{"name": "bm25"}]}
    cases = [({"seeed": 1}, "unknown key 'seeed' (did you mean 'seed'?)"),
             ({"split": {"val_grups": 1}}, "unknown key 'split.val_grups' (did you mean "
                                           "'val_groups'?)"),
             ({"features": {"ocr": {"psmm": 6}}}, "features.ocr.psmm: unknown key (did you "
                                                  "mean 'psm'?)")]
    for extra, message in cases:
        with pytest.raises(ConfigError) as err:
            validate_config({**base, **extra})
        assert message in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_config({**base, "zzzzzz": 1})
    assert "did you mean" not in str(err.value)
