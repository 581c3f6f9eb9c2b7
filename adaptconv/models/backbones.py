"""Backbones by name: the built-in small CNN, or any timm model (never with downloaded weights)."""

from __future__ import annotations

from torch import nn

from .networks import SimpleCNN

BUILTIN_BACKBONES = ("simplecnn", "simplecnn-s")


def build_backbone(
    name: str, in_chans: int, num_classes: int = 0, features_only: bool = False
) -> tuple[nn.Module, list[int]]:
    """(model, feature channels). ``features_only`` returns a feature extractor (list of stage maps)."""
    if name == "simplecnn":
        model = SimpleCNN(in_chans, num_classes, widths=(32, 64, 128), features_only=features_only)
    elif name == "simplecnn-s":
        model = SimpleCNN(in_chans, num_classes, widths=(16, 32, 64), features_only=features_only)
    else:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown backbone {name!r}: neither built in ({', '.join(BUILTIN_BACKBONES)}) nor timm")
        kwargs = dict(pretrained=False, in_chans=in_chans)
        if features_only:
            model = timm.create_model(name, features_only=True, **kwargs)
            return model, list(model.feature_info.channels())
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
        return model, []
    return model, [f["num_chs"] for f in model.feature_info]


def load_pretrained(model: nn.Module, path: str) -> dict:
    """Load weights a user keeps on disk (never downloaded) into ``model`` before any swap.

    Accepts a state dict or a checkpoint holding one under ``state_dict``/``model``. Tensors whose name
    and shape match are loaded; the rest (e.g. a classifier for another number of classes) are skipped
    and counted, so the record says exactly what was pretrained.
    """
    import os

    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights: no file at {path!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = model.state_dict()
    # task networks wrap the backbone: accept both bare backbone keys and prefixed ones
    prefixes = ["", "model.", "backbone."]
    loaded, skipped = {}, []
    for name, tensor in state.items():
        target = next((p + name for p in prefixes if p + name in own and own[p + name].shape == tensor.shape), None)
        if target is None:
            skipped.append(name)
        else:
            loaded[target] = tensor
    if not loaded:
        raise ValueError(f"pretrained weights {path!r}: no tensor matches the model by name and shape")
    model.load_state_dict(loaded, strict=False)
    return {"path": path, "loaded": len(loaded), "skipped": len(skipped), "skipped_names": skipped[:20]}
