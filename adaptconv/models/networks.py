"""The task networks, built of plain ``nn.Conv2d`` so any operator can be hot-swapped into them.

- :class:`SimpleCNN` — a small VGG/ResNet-style classifier (and feature extractor) that trains in
  seconds on a CPU; timm backbones are the alternative for real runs. Its ``feature_info`` follows
  timm's convention so stage selection works the same way.
- :class:`FCNSegmenter` — any feature backbone + a light FCN decoder (its feature upsampling
  bilinear or any registered upsampler, e.g. CARAFE; optionally a refinement head on the logits, e.g.
  PAC-CRF, guided by the image).
- :class:`JointUpsamplingNet` — guided depth upsampling: a guidance branch on the RGB image and a
  target branch on the upsampled depth, whose 3×3 convs (``target.layers.*``) are the operator under
  test; they compute a per-pixel embedding that reweights the low-resolution samples around each pixel
  (a learned joint bilateral upsampling starting as bilinear, or a registered upsampler's, e.g.
  CARAFE's, upsampling).
- :class:`DnCNN` — residual denoiser (Zhang et al. 2017): conv-ReLU, (depth−2)×(conv-BN-ReLU), conv;
  its body convs (``body.*``) are the operator under test.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: the upsampling that is no operator (plain interpolation, no parameters), and the absence of a refiner
BILINEAR = "bilinear"
NO_REFINER = "none"


def upsampler_choices() -> list[str]:
    """What a network's ``upsampler`` may be: ``bilinear`` or any registered operator of kind upsampler."""
    from ..ops import list_ops

    return [BILINEAR, *list_ops(kind="upsampler")]


def refiner_choices() -> list[str]:
    """What a task's ``crf`` may be: ``none`` or any registered operator of kind refiner."""
    from ..ops import list_ops

    return [NO_REFINER, *list_ops(kind="refiner")]


def _check_upsampler(upsampler: str) -> None:
    choices = upsampler_choices()
    if upsampler not in choices:
        raise ValueError(f"upsampler must be one of {', '.join(choices)}, got {upsampler!r}")


def offered_settings(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """The ``settings`` a network offers an operator (see :class:`~adaptconv.ops.base.AdaptiveModule`)
    that ``cls``'s constructor declares by name; the others are not its to take."""
    params = inspect.signature(cls).parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in settings.items() if k in params and params[k].kind in named}


def _kind_op(name: str, kind: str) -> type:
    from ..ops import get_op

    cls = get_op(name)
    if cls.kind != kind:
        raise ValueError(f"{name!r} is an operator of kind {cls.kind!r}, not of kind {kind!r}")
    return cls


def build_upsampler(name: str, channels: int, scale_factor: int, **settings: Any) -> nn.Module:
    """Upsampler ``name`` (a registered operator of kind upsampler) built through its kind's constructor,
    ``cls(channels, scale_factor=s, **options)``, with the ``settings`` it declares."""
    cls = _kind_op(name, "upsampler")
    return cls(channels, scale_factor=scale_factor, **offered_settings(cls, settings))


def build_refiner(name: str, channels: int, guide_channels: int, **settings: Any) -> nn.Module:
    """Refiner ``name`` (a registered operator of kind refiner) built through its kind's constructor,
    ``cls(channels, guide_channels=Cg, **options)`` (without a guide for one that takes none), with the
    ``settings`` it declares."""
    cls = _kind_op(name, "refiner")
    options = offered_settings(cls, settings)
    if cls.guide != "none":
        options["guide_channels"] = guide_channels
    return cls(channels, **options)


def _fit(t: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize to ``size`` if needed (a CARAFE by an integer factor can miss odd sizes by a pixel)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (1×1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class SimpleCNN(nn.Module):
    """stem (3×3) → stages of BasicBlocks (stride 2 from the second stage) → GAP → linear.

    ``features_only=True`` returns the list of stage outputs instead (for segmentation).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        widths=(32, 64, 128),
        blocks: int = 1,
        features_only: bool = False,
    ) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_chans, widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.features_only = features_only
        self.feature_info = [dict(num_chs=w, reduction=2**i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self.head = None if features_only else nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        if self.features_only:
            return feats
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class FCNSegmenter(nn.Module):
    """Backbone features → 1×1 projections → upsample to the finest map → sum → 3×3 conv → classes
    → bilinear to the image size → (optional) refinement head.

    ``upsampler``: ``"bilinear"``, or the name of a registered upsampler (e.g. ``"carafe"``) that
    upsamples each projected feature map to the finest one by ``reductions[i] // reductions[0]``
    (``reductions``: the backbone's output strides, needed then; offered ``compressed_channels=width``);
    the logits still go to the image size bilinearly. ``refiner``: a module called as
    ``refiner(logits, image)`` (e.g. :class:`adaptconv.ops.paccrf.PacCRF`; ``refiner(logits)`` if it
    was built without a guide).
    """

    def __init__(
        self,
        backbone: nn.Module,
        channels: list[int],
        num_classes: int,
        width: int = 64,
        *,
        upsampler: str = "bilinear",
        reductions: list[int] | None = None,
        refiner: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _check_upsampler(upsampler)
        self.backbone = backbone
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = conv_bn_relu(width, width)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.upsampler = upsampler
        self.upsamplers = None
        if upsampler != BILINEAR:
            if reductions is None or len(reductions) != len(channels):
                raise ValueError(
                    f"FCNSegmenter: upsampler={upsampler!r} needs the backbone's reductions, one per feature map"
                )
            if any(r % reductions[0] for r in reductions):
                raise ValueError(f"FCNSegmenter: reductions {reductions} are not multiples of the finest one")
            self.upsamplers = nn.ModuleList(
                build_upsampler(upsampler, width, r // reductions[0], compressed_channels=width)
                if r > reductions[0]
                else nn.Identity()
                for r in reductions
            )
        self.refiner = refiner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        if self.upsamplers is not None:
            y = sum(_fit(up(lat(f)), size) for lat, up, f in zip(self.lateral, self.upsamplers, feats))
        else:
            y = sum(
                F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False)
                if f.shape[-2:] != size
                else lat(f)
                for lat, f in zip(self.lateral, feats)
            )
        y = self.classifier(self.fuse(y))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.refiner is None:
            return y
        if getattr(self.refiner, "guide_channels", 0) is None:  # a refiner built without a guide
            return self.refiner(y)
        return self.refiner(y, x)


def bilinear_tap_weights(size: int, scale: int, radius: int = 1) -> torch.Tensor:
    """Weights of bilinear upsampling (``align_corners=False``) by ``scale`` along one axis of ``size``
    low-resolution pixels, as a ``(size·scale)×(2·radius+1)`` matrix over the low-resolution pixels
    ``cell + (−radius..radius)`` around each output pixel's own cell ``cell = ⌊p/scale⌋``.

    Clamped source indices at the borders (what ``F.interpolate`` does) are the same as reading a
    replicate-padded input, which is how :func:`lr_taps` reads the taps."""
    if radius < 1:
        raise ValueError(f"bilinear_tap_weights: radius must be >= 1, got {radius}")
    p = torch.arange(size * scale, dtype=torch.float64)
    src = (p + 0.5) / scale - 0.5
    i0 = torch.floor(src)
    frac = src - i0
    rel = (i0 - torch.div(p, scale, rounding_mode="floor")).long() + radius  # tap of i0: −1 or 0 (+radius)
    w = torch.zeros(size * scale, 2 * radius + 1, dtype=torch.float64)
    rows = torch.arange(size * scale)
    w[rows, rel] += 1 - frac
    w[rows, rel + 1] += frac
    return w


def lr_taps(x: torch.Tensor, scale: int, radius: int = 1) -> torch.Tensor:
    """The (2r+1)² low-resolution pixels around each high-resolution pixel's cell, replicate-padded:
    B×C×h×w → B×(2r+1)²×C×(h·scale)×(w·scale), taps row-major."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    k = 2 * radius + 1
    shifted = [padded[..., dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)]
    b, c = x.shape[:2]
    t = torch.stack(shifted, 1)  # B×k²×C×h×w
    # nearest upsampling by repetition (exact, no floating-point source index)
    return t[..., :, None, :, None].expand(b, k * k, c, h, scale, w, scale).reshape(b, k * k, c, h * scale, w * scale)


class JointUpsamplingNet(nn.Module):
    """forward(rgb B×3×H×W at high resolution, depth_lr B×1×(H/s)×(W/s)) → depth B×1×H×W.

    A learned joint bilateral upsampling (kernel prediction, as in Kopf et al. 2007 / Kim et al.'s
    deformable kernel networks): every output pixel is a convex combination of the 3×3 low-resolution
    samples around its cell,

        out(p) = Σ_q softmax_q( base_q(p) − ‖φ(p) − φ(q)‖² ) · depth_lr(q)

    where ``base`` is the log-weight of bilinear upsampling (floored at ``floor``; or, with an
    ``upsampler`` that predicts kernels — ``kernel_logits``, e.g. ``"carafe"`` — its content-aware
    logits from the depth, offered ``init="bilinear"`` to start at the same bilinear weights) and φ
    is a per-pixel embedding computed by the target branch from the depth and the guidance features; φ(q) is read at the high-resolution pixel each sample was taken at
    (centre-pixel decimation: offset ⌊s/2⌋ of its cell). φ starts near zero, so the network starts as
    bilinear upsampling and learns *which* neighbouring sample each pixel belongs with — the
    multiplicative "jump × side of the edge" that a plain residual CNN must build from ReLUs (and did
    not, at CPU budgets).

    An ``upsampler`` that does not predict kernels gives the base upsampling the target branch starts
    from (its output), while ``base`` stays bilinear's.

    Guidance branch: two 3×3 convs on the standardised RGB. Target branch: ``head`` on the base
    upsampling of the depth minus its per-image mean (so features do not depend on the absolute depth;
    the output, a convex combination of the input depths, is in the input's units whatever they are),
    then ``layers`` 3×3 convs on [depth features, guidance features] (``target.layers.*``: the operator
    under test), then ``tail``, a 1×1 conv of [last features, standardised RGB] to the
    ``embed``-dimensional φ, times ``embed_gain`` (see there).
    """

    #: RGB standardisation (ImageNet statistics: a fixed, conventional choice)
    RGB_MEAN = (0.485, 0.456, 0.406)
    RGB_STD = (0.229, 0.224, 0.225)

    def __init__(
        self,
        width: int = 32,
        layers: int = 4,
        guide_channels: int = 3,
        *,
        upsampler: str = "bilinear",
        scale: int | None = None,
        embed: int = 4,
        embed_gain: float = 300.0,
        floor: float = 1e-3,
        radius: int = 1,
    ) -> None:
        super().__init__()
        _check_upsampler(upsampler)
        if scale is not None and (not isinstance(scale, int) or scale < 2):
            raise ValueError(f"JointUpsamplingNet: scale must be an integer >= 2, got {scale!r}")
        if not 0 < floor < 1:
            raise ValueError(f"JointUpsamplingNet: floor must be in (0, 1), got {floor}")
        if embed_gain <= 0:
            raise ValueError(f"JointUpsamplingNet: embed_gain must be > 0, got {embed_gain}")
        self.scale, self.radius, self.floor, self.embed_gain = scale, radius, floor, float(embed_gain)
        # A learned upsampler (CARAFE: it predicts the base kernels from the depth); kept outside
        # ``target`` so the task's default swap selection leaves it alone.
        self.upsample = None
        if upsampler != BILINEAR:
            if scale is None:
                raise ValueError(f"JointUpsamplingNet: upsampler={upsampler!r} needs the integer scale (>= 2)")
            self.upsample = build_upsampler(
                upsampler, 1, scale, k_up=2 * radius + 1, compressed_channels=width, init="bilinear", init_floor=floor
            )
        self.kernels_from_upsampler = callable(getattr(self.upsample, "kernel_logits", None))
        self.register_buffer(
            "rgb_mean",
            torch.tensor(self.RGB_MEAN[:guide_channels]).view(1, -1, 1, 1)
            if guide_channels == 3
            else torch.full((1, guide_channels, 1, 1), 0.5),
            persistent=False,
        )
        self.register_buffer(
            "rgb_std",
            torch.tensor(self.RGB_STD[:guide_channels]).view(1, -1, 1, 1)
            if guide_channels == 3
            else torch.full((1, guide_channels, 1, 1), 0.25),
            persistent=False,
        )
        self.guidance = nn.Sequential(
            nn.Conv2d(guide_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.target = nn.Module()
        self.target.head = nn.Conv2d(1, width, 3, padding=1)
        # Each layer sees the depth features and the guidance features side by side, so a plain conv
        # can use the guidance too; adaptive operators can additionally adapt to their guide.
        self.target.layers = nn.ModuleList(nn.Conv2d(2 * width, width, 3, padding=1) for _ in range(layers))
        # φ: a 1×1 projection of the features *and the standardised guide itself*: the features are
        # blurred across edges by the 3×3 convs before them, the guide is sharp to the pixel (a bias
        # would cancel in φ(p) − φ(q))
        self.target.tail = nn.Conv2d(width + guide_channels, embed, 1, bias=False)
        # φ = embed_gain · tail(...), with tail's weights at 1e-2 / embed_gain: φ starts small (the
        # kernels start at the base weights, yet φ has gradients from step one), and Adam's steps —
        # about lr per weight whatever the gradient's size — move φ embed_gain times faster. The
        # logits are quadratic in φ and need φ ~ 1 to pick a sample: at gain 1 and lr 1e-3 that took
        # thousands of steps (Middlebury ×8, 100 steps, seeds 0-2, vs bilinear: −10% at gain 1,
        # −15% at 10 and 30, −21% at 100, −26% at 300, −19% at 1000).
        nn.init.normal_(self.target.tail.weight, std=1e-2 / self.embed_gain)
        self._prior: dict = {}

    def base_logits(self, depth_lr: torch.Tensor, s: int) -> torch.Tensor:
        """B×k²×H×W (or 1×k²×H×W) log-weights of the base ×``s`` upsampling (bilinear, or the upsampler's)."""
        h, w = depth_lr.shape[-2:]
        if self.kernels_from_upsampler:
            logits = self.upsample.kernel_logits(depth_lr)
            k = 2 * self.radius + 1
            if tuple(logits.shape[1:]) != (k * k, h * s, w * s):
                raise ValueError(
                    f"JointUpsamplingNet: upsampler {self.upsample.name!r}'s kernel_logits gave "
                    f"{tuple(logits.shape)}, expected B×{k * k}×{h * s}×{w * s} ({k}×{k} taps, "
                    f"the k_up={k} it is offered)"
                )
            return logits
        key = (h, w, s, depth_lr.device, depth_lr.dtype)
        if key not in self._prior:
            wy = bilinear_tap_weights(h, s, self.radius)
            wx = bilinear_tap_weights(w, s, self.radius)
            k = 2 * self.radius + 1
            prior = (wy[:, None, :, None] * wx[None, :, None, :]).reshape(h * s, w * s, k * k)
            self._prior = {key: prior.clamp(min=self.floor).log().permute(2, 0, 1)[None].to(depth_lr)}
        return self._prior[key]

    def forward(self, rgb: torch.Tensor, depth_lr: torch.Tensor) -> torch.Tensor:
        (hh, ww), (h, w) = rgb.shape[-2:], depth_lr.shape[-2:]
        s = hh // h
        if s < 2 or (hh, ww) != (h * s, w * s) or (self.scale is not None and s != self.scale):
            raise ValueError(
                f"JointUpsamplingNet: rgb {tuple(rgb.shape)} must be exactly the depth "
                f"{tuple(depth_lr.shape)} × {self.scale or 'an integer scale >= 2'}"
            )
        mean = depth_lr.mean(dim=(1, 2, 3), keepdim=True)
        centred = depth_lr - mean
        base = self.base_logits(centred, s)
        taps = lr_taps(centred, s, self.radius)[:, :, 0]  # B×k²×H×W
        if self.upsample is not None and not self.kernels_from_upsampler:
            up_centred = self.upsample(centred)
        else:
            up_centred = (F.softmax(base, 1) * taps).sum(1, keepdim=True)
        rgb = (rgb - self.rgb_mean) / self.rgb_std
        g = self.guidance(rgb)
        t = F.relu(self.target.head(up_centred), inplace=True)
        for layer in self.target.layers:
            t = F.relu(layer(torch.cat([t, g], 1)), inplace=True)
        phi = self.target.tail(torch.cat([t, rgb], 1)) * self.embed_gain
        o = s // 2
        phi_q = lr_taps(phi[..., o::s, o::s], s, self.radius)  # B×k²×E×H×W
        dist = (phi_q - phi[:, None]).square().sum(2)
        return (F.softmax(base - dist, 1) * taps).sum(1, keepdim=True) + mean


class DnCNN(nn.Module):
    """Predicts the noise and subtracts it (residual learning)."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 8) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN depth must be >= 3, got {depth}")
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
                )
                for _ in range(depth - 2)
            ]
        )
        self.tail = nn.Conv2d(width, channels, 3, padding=1)
        # start as the identity (the noisy input, no noise predicted): a random tail starts ~8 dB below
        # the input and spends a short budget just getting back to it
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return noisy - self.tail(self.body(F.relu(self.head(noisy), inplace=True)))
