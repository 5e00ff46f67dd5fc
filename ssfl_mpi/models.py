"""Models: an MLP, a small CNN for 8x8/28x28 inputs, the paper's CIFAR ResNet-18 (GroupNorm), torchvision's variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError

AUTO_MODEL = {"digits": "cnn", "synthetic": "mlp", "mnist": "cnn", "fashionmnist": "cnn",
              "cifar10": "resnet18", "cifar100": "resnet18", "femnist": "femnist-cnn",
              "shakespeare": "char-lstm"}
GROUPS = 32  # GroupNorm groups, as the reference


def mlp(input_shape: tuple, n_classes: int, hidden: int = 200) -> nn.Module:
    n_in = 1
    for d in input_shape:
        n_in *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def cnn(input_shape: tuple, n_classes: int) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
        raise UsageError(f"model cnn needs image inputs with sides divisible by 4, got shape {input_shape}")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, n_classes))


class BasicBlock(nn.Module):
    """The reference's CIFAR basic block: two 3x3 convs with GroupNorm, a 1x1 conv + GN `shortcut`."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(GROUPS, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(GROUPS, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.GroupNorm(GROUPS, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The SSFL authors' ResNet (api/model/resnet.py, `customized_resnet18`): 3x3 stride-1 stem, no
    max-pool, GroupNorm(32) everywhere, layers named conv1/bn1/layer1-4/linear as theirs.

    Every layer keeps PyTorch's default initialization (kaiming_uniform with a = sqrt(5): conv
    weight std 1/sqrt(3 fan_in)), as the reference does. torchvision's resnet18 re-initializes
    convs with kaiming_normal(fan_out), 1.7-2.45x larger, which moves |g * w| saliency and with it
    the SSFL mask (per-layer densities by up to 0.08): see `resnet18-torchvision`.
    """

    def __init__(self, in_channels: int, n_classes: int, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(GROUPS, 64)
        layers, planes_in = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks_i = []
            for stride in strides:
                blocks_i.append(BasicBlock(planes_in, planes, stride))
                planes_in = planes
            layers.append(nn.Sequential(*blocks_i))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # The reference's avg_pool2d(out, 4) on 32x32 inputs, where layer4 is 4x4 (the same kernel,
        # so the same arithmetic); a kernel of the whole map also takes other input sizes.
        out = F.avg_pool2d(out, tuple(out.shape[-2:])).flatten(1)
        return self.linear(out)


def resnet18(input_shape: tuple, n_classes: int) -> nn.Module:
    """The paper's ResNet-18 as the authors' code builds and initializes it."""
    if len(input_shape) != 3:
        raise UsageError(f"model resnet18 needs image inputs, got shape {input_shape}")
    return CifarResNet(input_shape[0], n_classes)


def resnet18_torchvision(input_shape: tuple, n_classes: int) -> nn.Module:
    """torchvision's resnet18 with the same CIFAR stem and GroupNorm, and torchvision's own
    re-initialization of its convs (kaiming_normal, fan_out; the replaced stem keeps PyTorch's
    default); shortcuts are named `downsample`. This project's model before the reference profile."""
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise UsageError(f"model resnet18-torchvision needs image inputs, got shape {input_shape}")
    model = tv_resnet18(num_classes=n_classes, norm_layer=lambda ch: nn.GroupNorm(GROUPS, ch))
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def femnist_cnn(input_shape: tuple, n_classes: int) -> nn.Module:
    """LEAF's FEMNIST CNN: conv5x5-32, pool, conv5x5-64, pool, dense 2048, n_classes (62)."""
    if tuple(input_shape) != (1, 28, 28):
        raise UsageError(f"model femnist-cnn needs 1x28x28 images, got shape {input_shape}")
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 2048), nn.ReLU(), nn.Linear(2048, n_classes))


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model: embedding 8, two LSTM(256) layers, dense over the vocabulary on the
    last step."""

    def __init__(self, vocab: int, embed: int = 8, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


def char_lstm(input_shape: tuple, n_classes: int) -> nn.Module:
    if len(input_shape) != 1:
        raise UsageError(f"model char-lstm needs character sequences, got input shape {input_shape}")
    return CharLSTM(n_classes)


BUILDERS = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18, "resnet18-torchvision": resnet18_torchvision,
            "femnist-cnn": femnist_cnn, "char-lstm": char_lstm}


def build(name: str, *, dataset: str, input_shape: tuple, n_classes: int, seed: int) -> nn.Module:
    """The same initial weights on every rank: built under a private copy of torch's RNG."""
    name = resolve(name, dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BUILDERS[name](input_shape, n_classes)
    buffers = [n for n, _ in net.named_buffers()]
    if buffers:  # only parameters travel, aggregate and checkpoint: running statistics would drift unseen
        raise UsageError(f"model {name!r} keeps state outside its parameters ({', '.join(buffers[:3])}"
                         f"{', ...' if len(buffers) > 3 else ''}: BatchNorm running statistics, say), which "
                         f"the rounds do not send, aggregate or checkpoint; use GroupNorm, as the paper's "
                         f"ResNet-18 does, or a model without buffers")
    return net


def resolve(name: str, dataset: str) -> str:
    return AUTO_MODEL[dataset] if name == "auto" else name
