"""``persrv-bench vlm-bench``: the tiny shape on CPU end to end, the 7B shape on the meta device."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("lightning")

from conftest import run_main  # noqa: E402

from bench.vlm.shapes import (LLAVA15_7B_PARAMS, SHAPES, build_model, build_processor,  # noqa: E402
                              parameter_counts, peak_bf16_flops, training_flops_per_sample)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PERSRV_BENCH_QUIET", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_llava15_7b_shape_builds_on_the_meta_device_with_7_06b_parameters():
    model = build_model("llava-1.5-7b", device="meta")
    assert next(model.parameters()).device.type == "meta"
    counts = parameter_counts(model)
    assert abs(counts["total"] - 7.06e9) / 7.06e9 < 0.01
    assert counts["total"] == LLAVA15_7B_PARAMS  # llava-hf/llava-1.5-7b-hf, exactly
    assert counts["vision"] == 303_507_456 and counts["projector"] == 20_979_712
    assert counts["lm_head"] == counts["embedding"] == 32064 * 4096
    cfg = model.config
    assert (cfg.vision_config.num_hidden_layers, cfg.vision_config.hidden_size) == (24, 1024)
    assert (cfg.text_config.num_hidden_layers, cfg.text_config.hidden_size,
            cfg.text_config.intermediate_size) == (32, 4096, 11008)
    assert cfg.image_seq_length == SHAPES["llava-1.5-7b"].image_tokens == 576
    # 6N per token: (6.476e9 + 0.131e9) x 625 + 0.3035e9 x 577 + 0.021e9 x 576, times 6
    flops = training_flops_per_sample(counts, SHAPES["llava-1.5-7b"], lm_tokens=625)
    by_hand = 6 * ((counts["language"] + counts["lm_head"]) * 625 + counts["vision"] * 577
                   + counts["projector"] * 576)
    assert flops == by_hand and 25.8e12 < flops < 26.0e12


def test_the_7b_processor_gives_576_image_tokens_worth_of_pixels():
    from bench.vlm.bench import SyntheticBatches
    from bench.vlm.tiny import EOS_ID, IMAGE_TOKEN_ID
    shape = SHAPES["llava-1.5-7b"]
    data = SyntheticBatches(build_processor("llava-1.5-7b"), shape, prompt_tokens=40,
                            answer_tokens=8, image_token_id=IMAGE_TOKEN_ID, pool=2)
    batch = data([0, 1, 2])
    assert batch["pixel_values"].shape == (3, 3, 336, 336)
    assert batch["input_ids"].shape == (3, 625) and data.lm_tokens == 625
    assert int((batch["input_ids"][0] == IMAGE_TOKEN_ID).sum()) == 576
    answer = batch["labels"][0] != -100
    assert int(answer.sum()) == 9 and bool(answer[-9:].all())  # the query + EOS only
    assert int(batch["labels"][0, -1]) == EOS_ID


def test_peak_table_knows_hopper_and_ampere_and_not_a_cpu():
    assert peak_bf16_flops("NVIDIA H200") == 989e12 == peak_bf16_flops("NVIDIA H100 80GB HBM3")
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("x86_64") is None and peak_bf16_flops(None) is None


def test_tiny_bench_on_cpu_reports_every_figure(tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = run_main(
        capsys, "-q", "vlm-bench", "--shape", "tiny", "--batch-size", "2", "--batch-size", "4",
        "--steps", "2", "--warmup-steps", "1", "--describe-batches", "2", "--max-new-tokens", "3",
        "--accelerator", "cpu", "--out", str(tmp_path / "out"), "--tracking-uri", uri)
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "vlm_bench.json").read_text())
    assert (tmp_path / "out" / "vlm_bench.md").read_text().startswith("# vlm-bench: tiny")
    assert result["precision"] == "32-true" and result["accelerator"] == "cpu"
    assert result["params"]["trainable"] == 2 * 2 * (32 * 16 + 16 * 32)  # r 16 on q/v, 2 layers
    assert [r["batch_size"] for r in result["train"]] == [2, 4]
    for row in result["train"]:
        assert not row["oom"]
        for key in ("step_time_s_median", "samples_per_s", "tokens_per_s", "model_flops_per_s",
                    "peak_memory_gib", "loss_first", "loss_last"):
            assert row[key] > 0, key
        assert row["mfu"] is None and row["memory_kind"] == "process_peak_rss"
        assert row["tokens_per_s"] == pytest.approx(row["samples_per_s"] * 65)
        assert row["model_flops_per_s"] == pytest.approx(row["samples_per_s"]
                                                         * result["flops"]["per_sample"])
    assert result["peak_flops"]["value"] is None
    d = result["describe"]
    assert d["images_per_s"] > 0 and d["new_tokens_per_s"] == pytest.approx(3 * d["images_per_s"])
    assert d["described"] == 4 and d["peak_memory_gib"] > 0
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("persrv-vlm-bench").experiment_id])[0]
    assert run.data.tags["persrv.kind"] == "vlm-bench" and run.data.tags["vlm.shape"] == "tiny"
    assert run.data.metrics["train_samples_per_s"] > 0
    assert run.data.metrics["describe_images_per_s"] == pytest.approx(d["images_per_s"])
    assert [m.step for m in client.get_metric_history(run.info.run_id,
                                                      "by_batch.samples_per_s")] == [2, 4]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"vlm_bench.json",
                                                                         "vlm_bench.md"}
