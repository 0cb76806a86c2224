"""Model shapes for ``persrv-bench vlm-bench``: LLaVA-1.5 configs built in code (no download).

``llava-1.5-7b`` has the exact shapes of ``llava-hf/llava-1.5-7b-hf`` (7,063,427,072 parameters):
a CLIP ViT-L/14 vision tower at 336 px (24 layers, hidden 1024, 577 patch positions, the CLS
dropped -> 576 image tokens), a 2-layer GELU MLP projector (1024 -> 4096 -> 4096) and a Llama-2-7B
language model (32 layers, hidden 4096, intermediate 11008, 32 heads, vocab 32064). Weights are
random: speed and memory do not depend on their values. ``tiny`` is the random CPU test model of
:mod:`bench.vlm.tiny`. The processor of the 7B shape pairs CLIP preprocessing at 336 px with the
tiny byte-level tokenizer (the benchmark builds its token ids directly; decoding ids the byte
vocabulary lacks gives empty text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.errors import ConfigError


@dataclass(frozen=True)
class Shape:
    """Sizes of one LLaVA-1.5 shape (what the FLOP count needs beside the parameter counts)."""
    name: str
    image_size: int
    patch_size: int
    image_tokens: int          # image tokens in the language model's sequence (CLS dropped)
    vocab_size: int

    @property
    def patch_positions(self) -> int:
        """Positions the vision tower runs over per image: patches + CLS."""
        return (self.image_size // self.patch_size) ** 2 + 1


SHAPES = {
    "llava-1.5-7b": Shape("llava-1.5-7b", image_size=336, patch_size=14, image_tokens=576,
                          vocab_size=32064),
    "tiny": Shape("tiny", image_size=32, patch_size=8, image_tokens=16, vocab_size=261),
}
#: The parameter count of llava-hf/llava-1.5-7b-hf.
LLAVA15_7B_PARAMS = 7_063_427_072


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise ConfigError(f"unknown VLM shape {name!r} (known: {', '.join(SHAPES)})")
    return SHAPES[name]


def llava15_7b_config(image_token_index: int) -> Any:
    """The ``LlavaConfig`` of LLaVA-1.5-7B (llava-hf's config.json), with our image token id."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from bench.vlm.tiny import BOS_ID, EOS_ID, PAD_ID
    shape = SHAPES["llava-1.5-7b"]
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=768,
        hidden_act="quick_gelu")
    text = LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=PAD_ID,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_index,
        image_seq_length=shape.image_tokens, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", pad_token_id=PAD_ID)


def build_processor(name: str) -> Any:
    """The ``LlavaProcessor`` of a shape (CLIP preprocessing at its size, byte tokenizer)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    from bench.vlm.tiny import CHAT_TEMPLATE, build_tiny_processor, build_tiny_tokenizer
    shape = get_shape(name)
    if name == "tiny":
        return build_tiny_processor()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": shape.image_size},
        crop_size={"height": shape.image_size, "width": shape.image_size})
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tiny_tokenizer(),
        patch_size=shape.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)


def build_model(name: str, *, device: Any = None, dtype: Any = None, seed: int = 0) -> Any:
    """A random ``LlavaForConditionalGeneration`` of shape ``name``, created directly on
    ``device`` (``"meta"``: no memory, for counting) in ``dtype``; seeded, global RNG untouched."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from bench.vlm.tiny import BOS_ID, EOS_ID, IMAGE_TOKEN_ID, PAD_ID, build_tiny_model
    get_shape(name)
    if name == "tiny":
        model = build_tiny_model(seed, dtype=dtype)
        return model.to(device) if device is not None else model
    config = llava15_7b_config(IMAGE_TOKEN_ID)
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            with torch.device(device or "cpu"):
                model = LlavaForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(previous)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = PAD_ID, BOS_ID, EOS_ID
    return model.eval()


def parameter_counts(model: Any) -> dict[str, int]:
    """Parameters of a LLaVA model by part: ``vision``, ``projector``, ``language`` (decoder
    layers + norm + any LoRA weights in them, without the input embedding table), ``embedding``,
    ``lm_head``, ``total``, ``trainable``. Works on the meta device and through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    inner = base.model

    def n(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    embedding = n(inner.language_model.get_input_embeddings())
    counts = {"vision": n(inner.vision_tower), "projector": n(inner.multi_modal_projector),
              "language": n(inner.language_model) - embedding, "embedding": embedding,
              "lm_head": n(base.lm_head)}
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts


def training_flops_per_sample(counts: dict[str, int], shape: Shape, lm_tokens: int) -> float:
    """Model FLOPs of one training example, the standard 6N-per-token rule applied per part::

        6 * ((language + lm_head) * lm_tokens + vision * patch_positions
             + projector * image_tokens)

    N counts every weight in the forward path, frozen ones included (forward 2N, backward 4N by
    the convention; with a frozen base the weight gradients are skipped, so the work done is
    nearer 4N: multiply MFU by 2/3 for that reading). The embedding lookup and the attention
    score FLOPs (about 2-3% at 625 tokens) are not counted; activation recomputation
    (gradient checkpointing) is hardware work, not model FLOPs.
    """
    per_lm_token = counts["language"] + counts["lm_head"]  # LoRA weights sit in `language`
    return 6.0 * (per_lm_token * lm_tokens + counts["vision"] * shape.patch_positions
                  + counts["projector"] * shape.image_tokens)


#: Dense bf16 tensor-core peaks (FLOP/s, no sparsity), matched against the CUDA device name.
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12))


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The assumed dense bf16 peak of a device (None when unknown, e.g. a CPU)."""
    for key, flops in PEAK_BF16_FLOPS:
        if device_name and key in device_name.upper():
            return flops
    return None
