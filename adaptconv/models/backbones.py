"""Backbones by name: the built-in small CNN, or any timm model (never with downloaded weights)."""

from __future__ import annotations

from torch import nn

from .networks import SimpleCNN

BUILTIN_BACKBONES = ("simplecnn", "simplecnn-s")


def build_backbone(name: str, in_chans: int, num_classes: int = 0, features_only: bool = False) -> tuple[nn.Module, list[int]]:
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
