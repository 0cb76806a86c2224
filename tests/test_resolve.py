"""A dataset built on the fly is reused only when builder, parameters and builder code match."""

from __future__ import annotations

from bench.config import DatasetSpec


def test_built_dataset_is_rebuilt_when_the_builder_code_changes(isolated_cache, monkeypatch,
                                                                caplog):
    import logging

    import bench.data.resolve as resolve
    spec = DatasetSpec(builder="synthetic", params={"n_stickers": 40, "n_users": 8, "seed": 0,
                                                    "images": False})
    caplog.set_level(logging.INFO, logger="bench.data.resolve")
    first = resolve.resolve_dataset(spec)
    caplog.clear()
    again = resolve.resolve_dataset(spec)
    assert "reusing dataset built earlier" in caplog.text
    assert again.fingerprint == first.fingerprint
    monkeypatch.setattr(resolve, "builder_code_version", lambda: "other-simulator-code")
    caplog.clear()
    resolve.resolve_dataset(spec)
    assert "reusing" not in caplog.text and "building dataset synthetic" in caplog.text


def test_built_datasets_land_inside_the_cache_folder_the_user_named(tmp_path, monkeypatch):
    """$PERSRV_BENCH_CACHE=X: built datasets go to X/datasets, never beside X."""
    import bench.data.resolve as resolve
    from bench.features.cache import default_cache_dir
    monkeypatch.setenv("PERSRV_BENCH_CACHE", str(tmp_path / "mine"))
    spec = DatasetSpec(builder="synthetic", params={"n_stickers": 40, "n_users": 8, "seed": 0,
                                                    "images": False})
    out = resolve.built_dataset_dir(spec)
    assert out.parent == tmp_path / "mine" / "datasets"
    assert default_cache_dir() == tmp_path / "mine"  # the feature cache itself is unchanged
    ds = resolve.resolve_dataset(spec)
    assert ds.root.resolve() == out.resolve() and not (tmp_path / "datasets").exists()
