"""Image towers and image tensors for the dual encoder.

- :func:`build_image_tower`: ``resnet18`` (torchvision, random init — no weight download) or
  ``small-cnn`` (four conv blocks), each ending in a linear map to ``out_dim`` (the text space).
- :func:`build_open_clip`: an open_clip model from a config name (+ ``pretrained`` tag or local
  file) or from ``open_clip.CLIP`` keyword arguments (a custom/tiny architecture), and its
  tokenizer; :func:`open_clip_image_size` reads its input side.
- :func:`image_tensor`: a sticker image as a ``uint8 (3, size, size)`` tensor (transparency on
  white, padded to a square, resized); :func:`normalise` maps uint8 batches to model input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Normalisation per tower family (``mean``, ``std`` on [0, 1] pixels).
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


class SmallCnn(nn.Module):
    """Four conv-BN-ReLU blocks (stride 2 each), global average pooling, a linear head."""

    def __init__(self, out_dim: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(4):
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def build_image_tower(arch: str, out_dim: int, width: int = 32) -> nn.Module:
    """A randomly initialised image tower mapping ``(B, 3, S, S)`` to ``(B, out_dim)``."""
    if arch == "small-cnn":
        return SmallCnn(out_dim, width)
    if arch == "resnet18":
        from torchvision.models import resnet18
        net = resnet18(weights=None)
        net.fc = nn.Linear(net.fc.in_features, out_dim)
        return net
    raise ValueError(f"unknown image tower {arch!r} (resnet18, small-cnn)")


def build_open_clip(model: str = "ViT-B-32", pretrained: str | None = None,
                    config: dict[str, Any] | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)``: ``open_clip.CLIP(**config)`` when ``config`` is given, else
    ``create_model(model, pretrained=...)`` (a tag needs the network once; a local file does
    not; None is random init)."""
    import open_clip
    from bench.errors import BenchError
    if config is not None:
        net = open_clip.CLIP(**config)
        ctx = int(config.get("text_cfg", {}).get("context_length", 77))
        return net, open_clip.SimpleTokenizer(context_length=ctx)
    try:
        net = open_clip.create_model(model, pretrained=pretrained)
    except Exception as exc:
        raise BenchError(f"open_clip: could not create {model!r} with pretrained={pretrained!r} "
                         f"({type(exc).__name__}: {str(exc)[:200]}); offline, pass a local weight "
                         "file as open_clip.pretrained") from None
    return net, open_clip.get_tokenizer(model)


def open_clip_image_size(net: nn.Module) -> int:
    size = getattr(getattr(net, "visual", None), "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def image_tensor(image: Any, size: int) -> torch.Tensor:
    """A PIL RGB image as ``uint8 (3, size, size)``: padded to a square with white, resized."""
    import numpy as np
    from PIL import Image
    w, h = image.size
    side = max(w, h)
    if w != h:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalise(images: torch.Tensor, mean_std: tuple) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` -> float, scaled to [0, 1] and standardised per channel."""
    mean, std = (torch.tensor(v, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
                 for v in mean_std)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 1/8 of the side (white fill), per image."""
    b, _, s, _ = images.shape
    pad = max(1, s // 8)
    flip = torch.rand(b, generator=generator) < 0.5
    out = images.clone()
    out[flip] = out[flip].flip(-1)
    padded = torch.nn.functional.pad(out, (pad, pad, pad, pad), value=255)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(b)])
