"""Backbones and the multitask LUAB network of train/fast_train.py.

torchvision and timm do not import beside the CPU torch wheel here, so the ResNets are defined
in the project. A backbone maps images to a feature map (N, C, h, w); :class:`LuabNet` puts three
heads on it: the classifier and the paper's point head on globally pooled features, and the
attention head (a 1x1 convolution) on the feature map itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _bn(channels: int, zero: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    if zero:  # residual branch starts as identity: trains faster and deeper (Goyal et al.)
        nn.init.zeros_(bn.weight)
    return bn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, c_out, 3, 1, 1, bias=False)
        self.bn2 = _bn(c_out, zero=True)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on 3x3 (v1.5)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = _bn(c_out, zero=True)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x), inplace=True)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(c_out))


class ResNet(nn.Module):
    """ResNet trunk without pooling or classifier: images -> feature map.

    ``stem="imagenet"``: 7x7/2 conv + 3x3/2 max-pool (stride 4, for 160-256 px inputs);
    ``stem="small"``: one 3x3/2 conv (stride 2, for the sample's 48-96 px inputs on a CPU).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        widths: Sequence[int],
        strides: Sequence[int],
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        c = widths[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, c, 7, 2, 3, bias=False),
                _bn(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
            self.stride = 4
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), _bn(c), nn.ReLU(True))
            self.stride = 2
        stages = []
        for depth, width, stride in zip(depths, widths, strides, strict=True):
            blocks = []
            for i in range(depth):
                blocks.append(block(c, width, stride if i == 0 else 1))
                c = width * block.expansion
            stages.append(nn.Sequential(*blocks))
            self.stride *= stride
        self.stages = nn.Sequential(*stages)
        self.out_channels = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def resnet_small() -> ResNet:
    """0.3 M parameters, stride 8 (an 8x8 feature map at 64 px, enough to place an attention
    peak): ~500 training images/s at 64 px on one CPU core with channels-last."""
    return ResNet(BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), (1, 2, 2, 1), stem="small")


def resnet_small_wide() -> ResNet:
    """resnet_small with twice the channels (1.2 M parameters): for the capacity question of
    the shortcut sample's learner (benchmarks/train_sample.md)."""
    return ResNet(BasicBlock, (1, 1, 1, 1), (32, 64, 128, 256), (1, 2, 2, 1), stem="small")


def resnet_small_deep() -> ResNet:
    """resnet_small with two blocks in each of its first three stages (0.4 M parameters)."""
    return ResNet(BasicBlock, (2, 2, 2, 1), (16, 32, 64, 128), (1, 2, 2, 1), stem="small")


def resnet18() -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2))


def resnet50() -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 2, 2))


class _TimmTrunk(nn.Module):
    """A timm model as a trunk (``forward_features``); only when timm imports."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import timm  # optional: needs torchvision, absent beside the CPU wheel

        self.net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
        self.out_channels = self.net.num_features
        self.stride = self.net.feature_info[-1]["reduction"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet_small": resnet_small,
    "resnet_small_wide": resnet_small_wide,
    "resnet_small_deep": resnet_small_deep,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def make_backbone(name: str) -> nn.Module:
    """A project ResNet by name, or ``timm:<name>`` when timm is importable."""
    if name.startswith("timm:"):
        return _TimmTrunk(name.removeprefix("timm:"))
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(BACKBONES)} or timm:<name>")
    return BACKBONES[name]()


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) logit maps -> (N, K, 2) expected (x, y) of their softmax, in [0, 1] crop
    coordinates (cell centres): a point predicted where the features are, not from their
    average."""
    n, k, h, w = logits.shape
    prob = logits.float().flatten(2).softmax(-1).view(n, k, h, w)
    xs = (torch.arange(w, device=logits.device, dtype=prob.dtype) + 0.5) / w
    ys = (torch.arange(h, device=logits.device, dtype=prob.dtype) + 0.5) / h
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], -1)


class LuabNet(nn.Module):
    """Backbone + classifier + point head (pooled features -> K (x, y) in [0, 1] crop coordinates)
    + attention head (feature map -> one logit map per attention channel).

    The backbone and classifier are built first, so with one seed a LuabNet and a plain
    classifier start from the same weights whatever heads are added.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        n_points: int = 1,
        map_channels: int = 2,
        attention_pool: bool = False,
        point_head: str = "pooled",
    ) -> None:
        super().__init__()
        self.attention_pool = attention_pool
        self.backbone = backbone
        channels = backbone.out_channels
        self.classifier = nn.Linear(channels, num_classes)
        self.n_points = n_points
        self.spatial_points = point_head == "soft-argmax"
        self.point_head: nn.Module | None = None
        if n_points:
            self.point_head = (
                nn.Conv2d(channels, n_points, 1)
                if self.spatial_points
                else nn.Linear(channels, 2 * n_points)
            )
        self.attention_head = nn.Conv2d(channels, map_channels, 1) if map_channels else None

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def forward(
        self, images: torch.Tensor, points: bool = True, attention: bool = True
    ) -> dict[str, torch.Tensor]:
        """``logits`` always; ``points`` (N, K, 2) and ``attention`` (N, C, h, w) logits when
        asked (skipped for the baseline, so it costs nothing); ``features`` for CAMs."""
        features = self.backbone(images)
        pooled = features.mean((2, 3))
        out = {"features": features}
        if points and self.point_head is not None and self.spatial_points:
            out["points"] = soft_argmax(self.point_head(features))
        elif points and self.point_head is not None:
            # sigmoid: targets are crop coordinates in [0, 1]; a bounded output keeps the
            # regression from running away at high learning rates times a large λ
            out["points"] = torch.sigmoid(self.point_head(pooled)).view(-1, self.n_points, 2)
        if (attention or self.attention_pool) and self.attention_head is not None:
            out["attention"] = self.attention_head(features)
        if self.attention_pool:
            pooled = self._attention_pooled(features, out["attention"])
        out["logits"] = self.classifier(pooled)
        return out

    @staticmethod
    def _attention_pooled(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Features averaged with the weights softmax(predicted map, channel 0). The weights
        are detached: only the attention loss trains where the head looks, else the
        classification loss would steer it to whatever cue is easiest (the background)."""
        weights = attention[:, 0].flatten(1).detach().float().softmax(1).to(features.dtype)
        return torch.einsum("nchw,nhw->nc", features, weights.view_as(attention[:, 0]))

    def cam(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class activation maps (N, h, w) of ``classes`` (Zhou et al. 2016): the classifier's
        weights of that class applied to each feature-map cell."""
        weights = self.classifier.weight[classes]  # (N, C)
        return torch.einsum("nc,nchw->nhw", weights.float(), features.float())
