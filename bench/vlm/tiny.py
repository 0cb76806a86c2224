"""A tiny random LLaVA-1.5 (about 40k parameters) built in code: for tests and the CPU smoke config.

Nothing is downloaded (works with ``HF_HUB_OFFLINE=1``). The architecture mirrors transformers'
own ``LlavaVisionText2TextModelTester``: a 2-layer CLIP vision tower on 32x32 images (patch 8 ->
16 image tokens after dropping CLS), a 2-layer Llama with hidden size 32. The tokenizer is
byte-level (every UTF-8 byte is a token, no merges), so any query or prompt tokenizes without
unknown tokens and decodes back to the same text. Special tokens: ``<pad>`` 0, ``<s>`` 1 (BOS,
prepended like Llama's tokenizer), ``</s>`` 2, ``<unk>`` 3, ``<image>`` 4. Weights come from a
seeded generator, so every process (e.g. every DDP rank) builds the same model.
"""

from __future__ import annotations

from typing import Any

#: The ``model.name_or_path`` that selects this model (also its id in caches and MLflow).
TINY_MODEL_NAME = "tiny-random-llava"

IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16; the CLS token is dropped ("default")
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, IMAGE_TOKEN_ID = range(len(SPECIAL_TOKENS))

#: The llava-hf LLaVA-1.5 chat template (``USER: <image>\n<text> ASSISTANT:``), trimmed.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table (what ``ByteLevel`` pre-tokenizes to)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def build_tiny_tokenizer():
    """Byte-level fast tokenizer (vocab = 5 specials + 256 bytes) that prepends ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in _byte_alphabet():
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
        padding_side="right", model_max_length=4096)


def build_tiny_processor():
    """A ``LlavaProcessor`` for the tiny model (CLIP preprocessing at 32x32, byte tokenizer)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tiny_tokenizer(), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE)


def tiny_llava_config(vocab_size: int | None = None) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vocab_size = vocab_size or len(SPECIAL_TOKENS) + 256
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=32, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=IMAGE_SEQ_LENGTH, vision_feature_select_strategy="default",
        vision_feature_layer=-1, pad_token_id=PAD_ID)


def build_tiny_model(seed: int = 0, dtype: Any = None):
    """The tiny ``LlavaForConditionalGeneration``, seeded random weights (global RNG untouched)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(tiny_llava_config())
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def build_tiny_llava(seed: int = 0, dtype: Any = None):
    """``(model, processor)`` of the tiny random LLaVA."""
    return build_tiny_model(seed, dtype), build_tiny_processor()
