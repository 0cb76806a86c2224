"""LoRA VLM (bench/vlm): tiny random LLaVA on CPU, nothing downloaded.

The dataset is made here: 8 Pillow-drawn stickers (4 colours x 2 shapes, RGBA PNGs), one corrupt
PNG and one sticker without an image; 4 users whose chronological clicks split into train and
validation click-groups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("lightning")

from bench.features.cache import FeatureCache  # noqa: E402
from bench.vlm.data import StickerQueryDataModule, VlmCollator, query_pairs  # noqa: E402
from bench.vlm.describe import (adapter_fingerprint, describe_stickers,  # noqa: E402
                                description_cache_key, keywords_of)
from bench.vlm.module import IGNORE_INDEX, LlavaLoraModule  # noqa: E402
from bench.vlm.tiny import (BOS_ID, EOS_ID, IMAGE_SEQ_LENGTH, IMAGE_TOKEN_ID,  # noqa: E402
                            PAD_ID, TINY_MODEL_NAME, build_tiny_processor)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "experiments" / "vlm_tiny_cpu.yaml"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220),
          "yellow": (240, 220, 20)}
QUERIES = {"red": ["angry", "so mad"], "green": ["ok", "fine"], "blue": ["sad", "crying"],
           "yellow": ["happy", "joy"]}
SHAPES = ("circle", "square")


def make_vlm_dataset(root: Path):
    from PIL import Image, ImageDraw

    from bench.data.format import write_dataset
    (root / "img").mkdir(parents=True, exist_ok=True)
    stickers = []
    for colour, rgb in COLORS.items():
        for shape in SHAPES:
            sid = f"{colour}-{shape}"
            im = Image.new("RGBA", (48, 40), (0, 0, 0, 0))
            draw = ImageDraw.Draw(im)
            (draw.ellipse if shape == "circle" else draw.rectangle)([6, 6, 40, 34],
                                                                    fill=rgb + (255,))
            im.save(root / "img" / f"{sid}.png")
            stickers.append({"sticker_id": sid, "image": f"img/{sid}.png"})
    (root / "img" / "broken.png").write_bytes(b"not a png at all")
    stickers += [{"sticker_id": "broken", "image": "img/broken.png"},
                 {"sticker_id": "noimg", "image": None}]
    clicks = []
    for u in range(4):
        ts = 0
        clicks.append({"user_id": f"u{u}", "query": "whatever", "sticker_id": "broken", "ts": 0})
        for g in range(4):  # 4 click-groups: 2 train, 1 validation, 1 test
            colour = list(COLORS)[(u + g) % 4]
            for shape in SHAPES:
                ts += 1
                clicks.append({"user_id": f"u{u}", "query": QUERIES[colour][g % 2],
                               "sticker_id": f"{colour}-{shape}", "ts": ts})
    return write_dataset(root, pd.DataFrame(stickers), pd.DataFrame(clicks),
                         {"name": "vlm-tiny", "source": "test", "license": "CC0"})


@pytest.fixture
def vlm_dataset(tmp_path):
    root = tmp_path / "vlm-ds"
    make_vlm_dataset(root)
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PERSRV_BENCH_QUIET", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def _module(**kw) -> LlavaLoraModule:
    kw = {"tiny": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lr": 3e-2, **kw}
    m = LlavaLoraModule(**kw)
    m.configure_model()
    return m


def _fixed_batch(module, dataset_dir, n=4):
    dm = StickerQueryDataModule(dataset_dir, module.processor, module.question, batch_size=n)
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), dm


def _train_steps(module, batch, steps):
    opt = module.configure_optimizers()
    module.on_fit_start()
    losses = []
    for _ in range(steps):
        loss = module(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    module.eval()
    return losses


# ------------------------------------------------------------------------------------ data


def test_pairs_come_from_the_train_side_of_the_split_only(vlm_dataset):
    processor = build_tiny_processor()
    dm = StickerQueryDataModule(vlm_dataset, processor, batch_size=4, seed=3)
    dm.setup("fit")
    # per user: broken (ts 0), g0, g1 train; g2 validation; g3 test. The VLM fits on the train
    # groups but the last (g0; the broken sticker's click is skipped) and stops early on g1.
    assert dm.stats["train_pairs"] == 8 and dm.stats["val_pairs"] == 8
    assert dm.stats["excluded_validation_clicks"] == 8 and dm.stats["excluded_test_clicks"] == 8
    assert dm.stats["skipped_stickers"] == 1 and dm.stats["skipped_reasons"] == {"unreadable": 1}
    assert "broken" not in set(dm.train_pairs["sticker_id"])
    assert not dm.train_pairs.duplicated().any()
    expected_fit = {(f"{list(COLORS)[u % 4]}-{s}", QUERIES[list(COLORS)[u % 4]][0])
                    for u in range(4) for s in SHAPES}
    expected_val = {(f"{list(COLORS)[(u + 1) % 4]}-{s}", QUERIES[list(COLORS)[(u + 1) % 4]][1])
                    for u in range(4) for s in SHAPES}
    assert set(map(tuple, dm.train_pairs[["sticker_id", "query"]].to_numpy())) == expected_fit
    assert set(map(tuple, dm.val_pairs[["sticker_id", "query"]].to_numpy())) == expected_val
    clicks = pd.DataFrame({"sticker_id": ["a", "a", "b"], "query": ["x", "x", "y"]})
    assert query_pairs(clicks, 0).equals(query_pairs(clicks, 0))
    assert len(query_pairs(clicks, 0)) == 2


def test_labels_mask_prompt_image_and_padding_exactly():
    from PIL import Image
    processor = build_tiny_processor()
    collate = VlmCollator(processor, "What is it?", train=True)
    img = Image.new("RGB", (40, 30), (10, 200, 10))
    queries = ["ok", "so mad"]
    batch = collate([{"sticker_id": f"s{i}", "image": img, "query": q}
                     for i, q in enumerate(queries)])
    tok = processor.tokenizer
    expanded = collate.prompt.replace("<image>", "<image>" * IMAGE_SEQ_LENGTH)
    assert collate.prompt == "USER: <image>\nWhat is it? ASSISTANT:"
    prompt_ids = tok(expanded)["input_ids"]  # BOS + prompt with 16 image tokens
    P = len(prompt_ids)
    assert prompt_ids[0] == BOS_ID and prompt_ids.count(IMAGE_TOKEN_ID) == IMAGE_SEQ_LENGTH
    width = P + max(len(q.encode()) for q in queries) + 1
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    for i, q in enumerate(queries):
        answer = tok(q, add_special_tokens=False)["input_ids"] + [EOS_ID]
        n = P + len(answer)
        ids, labels = batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        mask = batch["attention_mask"][i].tolist()
        assert ids[:P] == prompt_ids
        assert ids[P:n] == answer and tok.decode(answer[:-1]) == q
        assert labels == [IGNORE_INDEX] * P + answer + [IGNORE_INDEX] * (width - n)
        assert ids[n:] == [PAD_ID] * (width - n)  # right padding
        assert mask == [1] * n + [0] * (width - n)
        image_positions = [j for j, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
        assert len(image_positions) == IMAGE_SEQ_LENGTH
        assert all(labels[j] == IGNORE_INDEX for j in image_positions)
        assert [j for j, v in enumerate(labels) if v != IGNORE_INDEX] == list(range(P, n))


def test_generation_collate_pads_left_and_lists_missing_images():
    from PIL import Image
    processor = build_tiny_processor()
    collate = VlmCollator(processor, "What is it?", train=False)
    img = Image.new("RGB", (40, 30), (10, 200, 10))
    batch = collate([{"sticker_id": "a", "image": img, "query": None},
                     {"sticker_id": "b", "image": None, "query": None},
                     {"sticker_id": "c", "image": img, "query": None}])
    assert batch["sticker_ids"] == ["a", "c"] and batch["skipped_ids"] == ["b"]
    assert batch["input_ids"].shape[0] == 2
    assert bool((batch["input_ids"][:, -1] == batch["input_ids"][0, -1]).all())  # left padded
    assert "labels" not in batch


def test_keywords_split_normalise_and_dedupe():
    assert keywords_of("Happy, joy; so happy\n  Joy!  ,, ") == ["happy", "joy", "so happy"]
    assert keywords_of("") == []


# ---------------------------------------------------------------------------------- module


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_few_steps_overfit_a_fixed_batch(vlm_dataset, checkpointing):
    torch.manual_seed(0)
    module = _module(gradient_checkpointing=checkpointing)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    batch, _ = _fixed_batch(module, vlm_dataset)
    losses = _train_steps(module, batch, 15)
    assert module.model.base_model.model.is_gradient_checkpointing == checkpointing
    assert losses[-1] < losses[0] - 0.1, losses
    assert min(losses[-3:]) < min(losses[:3])


def test_adapter_save_load_gives_identical_generations(vlm_dataset, tmp_path):
    torch.manual_seed(0)
    trained = _module()
    batch, _ = _fixed_batch(trained, vlm_dataset)
    _train_steps(trained, batch, 10)
    out = trained.export_adapter(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "persrv_vlm.json",
            "processor_config.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "persrv_vlm.json").read_text())["model"] == TINY_MODEL_NAME

    loaded = _module(lora=False, adapter=str(out))
    base = _module(lora=False)
    loaded.eval()
    base.eval()
    assert not any(p.requires_grad for p in loaded.parameters())
    collate = VlmCollator(trained.processor, trained.question, train=False)
    from bench.features.images import load_image
    ds_items = [{"sticker_id": s, "image": load_image(vlm_dataset / "img" / f"{s}.png"),
                 "query": None} for s in ("red-circle", "blue-square", "yellow-circle")]
    gen = collate(ds_items)

    def tokens(m):
        with torch.no_grad():
            return m.model.generate(input_ids=gen["input_ids"],
                                    attention_mask=gen["attention_mask"],
                                    pixel_values=gen["pixel_values"], do_sample=False,
                                    max_new_tokens=6, min_new_tokens=6, pad_token_id=PAD_ID)

    assert torch.equal(tokens(trained), tokens(loaded))
    assert trained.generate_texts(gen) == loaded.generate_texts(gen)
    with torch.no_grad():
        logits = {name: m(batch).logits for name, m in
                  (("trained", trained), ("loaded", loaded), ("base", base))}
    assert torch.allclose(logits["trained"], logits["loaded"], atol=1e-6)
    assert not torch.allclose(logits["trained"], logits["base"], atol=1e-4)


def test_checkpoint_keeps_only_adapter_weights():
    module = _module()
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert len(ckpt["state_dict"]) == 8
    assert all("lora_" in k for k in ckpt["state_dict"])
    assert module.strict_loading is False


# -------------------------------------------------------------------------------- describe


def test_describe_writes_every_sticker_once_and_then_does_no_work(vlm_dataset, tmp_path,
                                                                  monkeypatch):
    import bench.vlm.describe as describe_mod
    from bench.data.format import load_dataset
    cache = FeatureCache(tmp_path / "cache")
    ds = load_dataset(vlm_dataset)
    ids = ds.stickers["sticker_id"].tolist()
    kw = dict(batch_size=4, max_new_tokens=4, cache=cache, accelerator="cpu", chunk_size=4)
    first: dict = {}
    part = describe_stickers(vlm_dataset, {"tiny": True}, None, limit=3, stats=first, **kw)
    assert part["sticker_id"].tolist() == ids[:3] and first["generated"] == 3
    stats: dict = {}
    t0 = time.perf_counter()
    frame = describe_stickers(vlm_dataset, {"tiny": True}, None, stats=stats, **kw)
    print(f"describe 10 stickers: {time.perf_counter() - t0:.1f}s")
    assert frame.columns.tolist() == ["sticker_id", "description", "keywords"]
    assert frame["sticker_id"].tolist() == ids
    assert stats["generated"] == 5 and stats["no_image"] == 2 and stats["cached"] == 3
    by_id = frame.set_index("sticker_id")
    assert by_id.loc["broken", "description"] == "" and by_id.loc["noimg", "description"] == ""
    assert (by_id.drop(["broken", "noimg"])["description"].str.len() > 0).all()
    key = description_cache_key(cache, ds.fingerprint, TINY_MODEL_NAME, "base")
    assert stats["key"] == key
    stored = cache.load(key)
    assert sorted(stored["sticker_id"]) == sorted(ids) and len(stored) == len(ids)
    meta = json.loads((cache.entry_dir(key) / "meta.json").read_text())
    assert meta["adapter"] == "base" and meta["model"] == TINY_MODEL_NAME

    def no_work(**_):
        raise AssertionError("a complete cache entry must not load a model")

    monkeypatch.setattr(describe_mod, "_build_predictor", no_work)
    again: dict = {}
    second = describe_stickers(vlm_dataset, {"tiny": True}, None, stats=again, **kw)
    assert again["generated"] == 0 and again["cached"] == len(ids)
    pd.testing.assert_frame_equal(second, frame)


# ------------------------------------------------------------------------------ train_vlm


def test_train_vlm_logs_mlflow_run_with_loss_history_and_adapter(vlm_dataset, tmp_path,
                                                                 monkeypatch):
    from mlflow.tracking import MlflowClient

    from bench.vlm.train import load_vlm_config, train_vlm
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_vlm_config(TINY_CONFIG, [f"output_dir={tmp_path / 'out'}", f"tracking_uri={uri}"],
                          dataset=vlm_dataset)
    t0 = time.perf_counter()
    result = train_vlm(cfg)
    print(f"train_vlm (tiny, 6 steps, incl. MLflow + registry): {time.perf_counter() - t0:.1f}s")
    client = MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "persrv-vlm-tiny"
    history = client.get_metric_history(result["run_id"], "train_loss_step")
    assert len(history) == cfg.trainer.max_steps
    assert [m.step for m in history] == list(range(cfg.trainer.max_steps))
    assert "val_loss" in run.data.metrics and "best_val_loss" in run.data.metrics
    assert run.data.params["config.lora.r"] == "8"
    assert run.data.params["data.train_pairs"] == "8"
    assert run.data.tags["dataset_fingerprint"] == result["data"]["dataset_fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= artifacts
    assert result["global_step"] == cfg.trainer.max_steps
    assert result["registered_version"] == "1"
    assert client.get_model_version(cfg.registered_model, "1").run_id == result["run_id"]
    import mlflow.pyfunc
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.registered_model}/1")
    finally:
        mlflow.set_tracking_uri(previous)
    answers = pyfunc.predict(pd.DataFrame({"image": [str(vlm_dataset / "img" / "red-circle.png"),
                                                     str(vlm_dataset / "img" / "broken.png")]}))
    assert answers.columns.tolist() == ["description", "keywords"] and len(answers) == 2
    assert answers["description"].iloc[1] == ""

    # checkpoints hold the adapter only; the export is the best checkpoint's adapter
    ckpt = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert len(ckpt["state_dict"]) == 8 and all("lora_" in k for k in ckpt["state_dict"])
    from safetensors.torch import load_file
    exported = load_file(str(Path(result["adapter_dir"]) / "adapter_model.safetensors"))
    best = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)
    for name, tensor in exported.items():
        match = [v for k, v in best["state_dict"].items()
                 if k.replace(".default.", ".").endswith(name.replace("base_model.model.", ""))]
        assert len(match) == 1 and torch.equal(match[0], tensor)

    # a run id resolves to the logged adapter (same content id as the exported folder)
    stats: dict = {}
    describe_stickers(vlm_dataset, cfg.model, result["run_id"], tracking_uri=uri,
                      cache=FeatureCache(tmp_path / "cache"), accelerator="cpu", limit=2,
                      max_new_tokens=2, stats=stats)
    assert stats["adapter_id"] == adapter_fingerprint(result["adapter_dir"])

    # resuming: same run, no further steps, last.ckpt reused
    cfg.registered_model = None
    again = train_vlm(cfg)
    assert again["resumed_from"] == result["last_checkpoint"]
    assert again["run_id"] == result["run_id"] and again["global_step"] == result["global_step"]
    assert len(client.get_metric_history(result["run_id"], "train_loss_step")) == len(history)


def test_config_rejects_unknown_keys_and_missing_dataset(tmp_path):
    from bench.errors import ConfigError
    from bench.vlm.train import VlmConfig, load_vlm_config, train_vlm
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {tiny: true}\ntrainer: {batch_sise: 2}\n")
    with pytest.raises(ConfigError, match="trainer.batch_sise"):
        load_vlm_config(bad)
    with pytest.raises(ConfigError, match="--dataset"):
        train_vlm(VlmConfig.model_validate({"model": {"tiny": True}}))
    with pytest.raises(ConfigError, match="bf16-true|precision"):
        load_vlm_config(TINY_CONFIG, ["trainer.precision=bf16-true"])


@pytest.mark.slow  # two processes: 25-110 s on 2 shared cores
def test_ddp_two_cpu_processes_train_an_epoch(vlm_dataset, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PERSRV_BENCH_QUIET": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MLFLOW_TRACKING_URI", None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "bench", "-q", "train-vlm", str(TINY_CONFIG), "--dataset",
           str(vlm_dataset), "--devices", "2", "--strategy", "ddp", "--tracking-uri", uri,
           "--output-dir", str(tmp_path / "out"), "-o", "registered_model=null", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=540)
    took = time.perf_counter() - t0
    print(f"DDP 2 x CPU train-vlm: {took:.1f}s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert result["global_step"] == 6  # 8 pairs / 2 ranks / batch 4 = 1 step x 6 epochs
    assert (Path(result["adapter_dir"]) / "adapter_model.safetensors").is_file()
    from mlflow.tracking import MlflowClient
    run = MlflowClient(uri).get_run(result["run_id"])
    assert run.data.metrics["epoch"] >= 1 and "val_loss" in run.data.metrics


@pytest.mark.slow  # two processes: 25-110 s on 2 shared cores
def test_ddp_two_cpu_processes_describe_like_one(vlm_dataset, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PERSRV_BENCH_QUIET": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cache_dir = tmp_path / "cache-ddp"
    out = tmp_path / "descriptions.parquet"
    cmd = [sys.executable, "-m", "bench", "-q", "describe", str(TINY_CONFIG), "--dataset",
           str(vlm_dataset), "--devices", "2", "--cache-dir", str(cache_dir),
           "-o", "describe.chunk_size=3", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=540)
    print(f"DDP 2 x CPU describe: {time.perf_counter() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = pd.read_parquet(out)
    single = describe_stickers(vlm_dataset, {"tiny": True}, None, batch_size=8, max_new_tokens=8,
                               cache=FeatureCache(tmp_path / "cache-one"), accelerator="cpu")
    pd.testing.assert_frame_equal(ddp, single)
    parts = list(cache_dir.glob("*/part-*.parquet"))
    assert len(parts) == 4  # ceil(10 / 3) chunks, written once (by rank 0 only)
    # part-<n>-<host><pid>-<uuid>: every part from one writer process (rank 0)
    assert len({p.stem.split("-")[2] for p in parts}) == 1


def test_describe_fills_the_cache_that_run_uses(vlm_dataset, tmp_path):
    """`describe` -> feature cache -> attach_features (what `run` calls) -> PerSRV's description
    field; the base-vs-fine-tuned ablation is the `features.descriptions` switch."""
    from bench.data.format import load_dataset
    from bench.features.extract import attach_features
    from bench.retrieval import Request, TrainView
    from bench.registry import make_retriever
    cache = FeatureCache(tmp_path / "cache")
    ds = load_dataset(vlm_dataset)
    frame = describe_stickers(vlm_dataset, {"tiny": True}, None, batch_size=4, max_new_tokens=4,
                              cache=cache, accelerator="cpu", chunk_size=4)
    stickers, _, report = attach_features(ds, {"ocr": False, "encoder": None,
                                               "descriptions": "base"}, cache)
    merged = stickers.set_index("sticker_id")["description"]
    expected = frame.set_index("sticker_id")["description"]
    described = expected[expected.str.len() > 0]
    assert len(described) >= 5
    assert (merged.reindex(described.index) == described).all()
    # another adapter id finds nothing: the switch selects which descriptions are used
    other, _, _ = attach_features(ds, {"ocr": False, "encoder": None,
                                       "descriptions": "sha256:0000000000000000"}, cache)
    assert "description" not in other.columns or other["description"].isna().all()

    view = TrainView(stickers=stickers, clicks=ds.interactions.iloc[0:0], meta=ds.meta)
    full = make_retriever("persrv", {"personalization": False}).fit(view)
    ablated = make_retriever("persrv-no-description", {"personalization": False}).fit(view)
    assert "description" in full.index_.fields and "description" not in ablated.index_.fields
    sid, text = next(iter(described.items()))
    query = text.split()[0]
    hits = [s for s, _ in full.search([Request("u", query)], 20)[Request("u", query)]]
    assert sid in hits


# --------------------------------------------------------------------- the experiment's split


def test_vlm_uses_the_experiments_split_and_never_sees_validation_or_test_pairs(tmp_path):
    """split.test_groups=2 (taken from the experiment YAML): no test or validation pair reaches
    the VLM's fitting or early-stopping pairs; with the default split some of them would."""
    from bench.data.format import load_dataset, write_dataset
    from bench.data.splits import SplitConfig, split_interactions
    from bench.vlm.config import load_vlm_config
    root = tmp_path / "ds"
    make_vlm_dataset(root)
    ds = load_dataset(root, on_invalid="skip")
    ids = [s for s in ds.stickers["sticker_id"] if s not in ("broken", "noimg")]
    clicks = [{"user_id": f"u{u}", "query": f"q{u}-{g}", "sticker_id": ids[(u + g) % len(ids)],
               "ts": 10 * g + u} for u in range(4) for g in range(6)]  # a unique pair per group
    write_dataset(root, ds.stickers, pd.DataFrame(clicks), {"name": "vlm-split", "source": "test",
                                                           "license": "CC0"})
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"dataset: {{path: {root}}}\nsplit: {{test_groups: 2}}\n"
                   "retrievers: [{name: bm25}]\n")
    cfg = load_vlm_config(TINY_CONFIG, benchmark_config=exp)
    assert cfg.split.test_groups == 2 and Path(cfg.dataset) == root.resolve()

    def vlm_pairs(split):
        dm = StickerQueryDataModule(cfg.dataset, build_tiny_processor(), split=split)
        dm.setup("fit")
        return {tuple(p) for f in (dm.train_pairs, dm.val_pairs)
                for p in f[["sticker_id", "query"]].to_numpy()}, dm

    splits = split_interactions(pd.DataFrame(clicks), SplitConfig(test_groups=2))
    held_out = {tuple(p) for f in (splits.test, splits.validation)
                for p in f[["sticker_id", "query"]].to_numpy()}
    assert len(held_out) == 12  # 4 users x (2 test + 1 validation) groups
    used, dm = vlm_pairs(cfg.split)
    assert used and not used & held_out
    assert dm.stats["split"]["test_groups"] == 2 and dm.stats["excluded_test_clicks"] == 8
    assert len(used) == 12 and dm.stats["val_pairs"] == 4  # groups 0-1 fit, group 2 stops early
    default_used, _ = vlm_pairs(None)
    assert default_used & held_out  # the default split would train on the 2nd-to-last group

    # split.mode global_time: every VLM click precedes every validation and test click
    from bench.data.protocols import protocol_splits
    from bench.vlm.data import vlm_clicks
    global_time = {"mode": "global_time", "val_fraction": 0.25, "test_fraction": 0.25}
    ds_now = load_dataset(root)
    fit, stop, counts = vlm_clicks(ds_now, global_time)
    outer = protocol_splits(ds_now, None, global_time)
    assert len(fit) and len(stop) and len(outer.validation) and len(outer.test)
    assert max(fit["ts"].max(), stop["ts"].max()) < min(outer.validation["ts"].min(),
                                                        outer.test["ts"].min())
    assert counts["train_clicks"] + counts["validation_clicks"] == len(outer.train)

    # an adapter trained under another split of this dataset is refused by describe
    from bench.errors import ConfigError
    from bench.vlm.describe import check_adapter_split
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    fingerprint = load_dataset(root, on_invalid="skip").fingerprint
    (adapter / "persrv_vlm.json").write_text(json.dumps(
        {"dataset_fingerprint": fingerprint, "split": dm.stats["split"]}))
    check_adapter_split(adapter, fingerprint, cfg.split)  # same split: fine
    with pytest.raises(ConfigError, match="split"):
        check_adapter_split(adapter, fingerprint, {"test_groups": 1})
