"""Parity with the SSFL authors' code (riohib/SSFL): its formulas written out here from their published
description, independently of the code under test, and compared on the same inputs."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from ssfl_mpi import data, models
from ssfl_mpi.config import make_config
from ssfl_mpi.methods import MaskContext, get
from ssfl_mpi.presets import load_preset
from ssfl_mpi.run_setup import local_spec
from ssfl_mpi.seeding import torch_gen
from ssfl_mpi.sparse import FlatModel, n_keep
from ssfl_mpi.training import LocalSpec, split_accuracy


def _prunable(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_resnet18_keeps_pytorchs_default_init_per_layer():
    """kaiming_uniform(a=sqrt(5)): weight ~ U(-b, b), b = 1/sqrt(fan_in), std = 1/sqrt(3 fan_in)."""
    net = models.build("resnet18", dataset="cifar10", input_shape=(3, 32, 32), n_classes=10, seed=3)
    tv = dict(_prunable(models.build("resnet18-torchvision", dataset="cifar10", input_shape=(3, 32, 32),
                                     n_classes=10, seed=3)))
    layers = _prunable(net)
    assert len(layers) == 21
    for name, m in layers:
        w = m.weight.detach()
        fan_in = w[0].numel()
        expected = 1 / math.sqrt(3 * fan_in)
        assert abs(float(w.std()) / expected - 1) < 0.05, name
        assert float(w.abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7, name
    # torchvision re-initializes its 3x3 body convs with kaiming_normal(fan_out): far larger
    ratios = [float(tv[n].weight.detach().std() / m.weight.detach().std()) for n, m in layers
              if n.startswith("layer") and "shortcut" not in n]
    assert len(ratios) == 16 and min(ratios) > 1.6


def _reference_client_scores(model: nn.Module, x, y, *, batch: int, q: int, gen) -> dict:
    """The authors' generate_saliency_scores: q times the first batch of a fresh shuffle of the
    client's loader, screen_gradients in eval mode with CrossEntropyLoss, |grad * weight| per
    prunable layer, summed, divided by q."""
    m = copy.deepcopy(model)
    m.eval()
    total = {}
    for _ in range(q):
        idx = torch.randperm(len(y), generator=gen)[:batch]
        m.zero_grad()
        nn.CrossEntropyLoss()(m(x[idx]), y[idx]).backward()
        for name, layer in _prunable(m):
            s = (layer.weight.grad * layer.weight).detach().abs().double()
            total[name] = total.get(name, 0) + s
    return {k: v / q for k, v in total.items()}


def _reference_mask(scores: dict, keep_ratio: float) -> torch.Tensor:
    """create_mask_from_scores: global threshold = k-th largest, keep every score >= it."""
    all_scores = torch.cat([v.flatten() for v in scores.values()])
    k = int(len(all_scores) * keep_ratio)
    threshold = torch.topk(all_scores, k, sorted=True).values[-1]
    return all_scores >= threshold


def _clients(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(12 + 5 * k, 1, 8, 8, generator=g), torch.randint(0, 10, (12 + 5 * k,), generator=g))
            for k in range(n)}


@pytest.mark.parametrize("q", [1, 4])
def test_saliency_and_mask_match_the_reference_for_q_1_and_4(q):
    clients = _clients()
    sizes = np.array([len(c[1]) for c in clients.values()])
    p = sizes / sizes.sum()
    net = models.build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=5)
    agg = None
    for k, (x, y) in clients.items():
        s = _reference_client_scores(net, x, y, batch=8, q=q, gen=torch_gen(0, "saliency", k))
        agg = {n: p[k] * v for n, v in s.items()} if agg is None else {n: agg[n] + p[k] * v for n, v in s.items()}
    expected = _reference_mask(agg, 0.5)

    flat = FlatModel(models.build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=5))
    ctx = MaskContext(flat=flat, clients=clients, client_sizes=sizes, seed=0, density=0.5, batch_size=8,
                      saliency_batches=q, saliency_score="mean-abs", topk_ties="keep-all")
    mask = get("ssfl").find_mask(ctx)
    assert torch.equal(mask.kept, expected)
    assert mask.n_kept >= n_keep(0.5, flat.n_prunable)
    ref_scores = torch.cat([v.flatten() for v in agg.values()]).float().numpy()
    assert np.allclose(mask.scores, ref_scores, rtol=1e-6, atol=0)


def test_q_above_1_scores_differ_between_the_two_definitions():
    clients = _clients()
    sizes = np.array([len(c[1]) for c in clients.values()])
    masks = {}
    for score in ("mean-abs", "abs-mean-grad"):
        flat = FlatModel(models.build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=5))
        ctx = MaskContext(flat=flat, clients=clients, client_sizes=sizes, seed=0, density=0.5, batch_size=4,
                          saliency_batches=4, saliency_score=score)
        masks[score] = get("ssfl").find_mask(ctx).kept
    jaccard = float((masks["mean-abs"] & masks["abs-mean-grad"]).sum() / (masks["mean-abs"] | masks["abs-mean-grad"]).sum())
    assert jaccard < 0.99


def _paper_spec(name: str, tmp_path):
    cfg = make_config(load_preset(name), {"data_root": str(tmp_path)})
    return local_spec(cfg, SimpleNamespace(augment=True, pad_fill=lambda padding: None))


def test_learning_rate_of_round_1_and_999_as_the_reference(tmp_path):
    spec = _paper_spec("paper-cifar10", tmp_path)
    assert spec.lr_at(1, 0) == pytest.approx(0.0998, abs=1e-12)
    assert spec.lr_at(999, 4) == pytest.approx(0.1 * 0.998 ** 999, rel=1e-12)
    assert spec.lr_at(999, 4) == pytest.approx(0.0135335, abs=5e-8)  # 0.0135606 with 0.998^998
    shifted = LocalSpec(**{**spec.__dict__, "lr_schedule": "exp-round-shifted"})
    assert shifted.lr_at(1, 0) == 0.1
    # CIFAR-100: CosineAnnealingWarmRestarts(T_0=10, eta_min=1e-5) stepped per epoch, a new one each round
    spec100 = _paper_spec("paper-cifar100", tmp_path)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, eta_min=1e-5)
    for epoch in range(10):
        assert spec100.lr_at(7, epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_augmentation_of_a_known_image_is_the_reference_pipeline():
    """RandomCrop(32, padding=4) + RandomHorizontalFlip on the raw image, then ToTensor + Normalize."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    mean, std = data.STATS["cifar10"]
    normalize = lambda t: TF.normalize(t, mean, std)  # noqa: E731
    tops, lefts, flips = torch.tensor([0, 7]), torch.tensor([8, 3]), torch.tensor([True, False])
    expected = []
    for i in range(2):
        img = TF.to_pil_image(raw[i])
        img = TF.crop(TF.pad(img, 4, fill=0), int(tops[i]), int(lefts[i]), 32, 32)
        if flips[i]:
            img = TF.hflip(img)
        expected.append(normalize(TF.to_tensor(img)))
    expected = torch.stack(expected)
    x = torch.stack([normalize(TF.to_tensor(TF.to_pil_image(r))) for r in raw])
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    black = ((torch.zeros_like(m) - m) / s).flatten()
    out = data.crop_flip(x, tops, lefts, flips, pad=4, fill=black)
    assert torch.equal(out, expected)
    # padding the normalized tensor with 0 pads with the mean colour instead: a different image
    assert not torch.equal(data.crop_flip(x, tops, lefts, flips, pad=4), expected)


def test_augment_batch_draws_flips_and_offsets_from_the_generator():
    x = torch.randn(6, 3, 32, 32)
    gen = torch.Generator().manual_seed(4)
    flips = torch.rand(6, generator=gen) < 0.5
    offsets = torch.randint(0, 9, (6, 2), generator=gen)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = data.augment_batch(x, torch.Generator().manual_seed(4), fill=fill)
    assert torch.equal(out, data.crop_flip(x, offsets[:, 0], offsets[:, 1], flips, pad=4, fill=fill))


def test_per_client_accuracy_is_the_unweighted_mean_over_clients():
    rng = np.random.default_rng(0)
    owner = rng.integers(0, 7, size=500)
    owner[owner == 3] = 4  # client 3 has no test samples: left out of the mean
    correct = torch.from_numpy(rng.random(500) < 0.6)
    per_client = [correct[owner == c].double().mean().item() for c in range(7) if (owner == c).any()]
    assert split_accuracy(correct, owner, 7) == pytest.approx(sum(per_client) / len(per_client), rel=1e-12)
    assert len(per_client) == 6


@pytest.mark.parametrize("momentum,clip", [(0.0, 10.0), (0.9, 0.5)])
def test_six_masked_local_steps_are_bit_identical_to_the_references_formulas(momentum, clip):
    """The reference's local step: forward, cross-entropy, backward, the gradient of w*m (grad * m),
    torch.nn.utils.clip_grad_norm_(parameters, clip), torch.optim.SGD(lr, momentum, weight
    decay).step(), the mask applied again. Six steps of local_train against it, bit for bit
    (clip 0.5 makes the clipping bite on every step)."""
    from ssfl_mpi.sparse import make_mask, topk_mask
    from ssfl_mpi.training import local_train

    ds = data.load("digits", root="data", download=False)
    x, y = ds.train_subset(np.arange(48))
    net = models.build("cnn", dataset="digits", input_shape=ds.input_shape, n_classes=10, seed=4)
    flat = FlatModel(copy.deepcopy(net))
    mask = make_mask(flat, topk_mask(torch.rand(flat.n_prunable, generator=torch.Generator().manual_seed(5)),
                                     n_keep(0.5, flat.n_prunable)))
    flat.flat.detach().mul_(mask.multiplier)
    spec = LocalSpec(epochs=1, batch_size=8, lr=0.1, momentum=momentum, weight_decay=5e-4, grad_clip=clip)
    local_train(flat, x, y, spec=spec, multiplier=mask.multiplier, gen=torch.Generator().manual_seed(6))

    ref = copy.deepcopy(net)
    m = {name: mask.multiplier[lo:hi].view(shape) for name, lo, hi, shape in
         zip(flat.names, flat.offsets[:-1], flat.offsets[1:], flat.shapes)}
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.mul_(m[name])
    opt = torch.optim.SGD(ref.parameters(), lr=spec.lr, momentum=momentum, weight_decay=spec.weight_decay)
    order = torch.randperm(48, generator=torch.Generator().manual_seed(6))
    ref.train()
    for i in range(0, 48, 8):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x[order[i:i + 8]]), y[order[i:i + 8]]).backward()
        for name, p in ref.named_parameters():
            p.grad.mul_(m[name])
        torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        opt.step()
        with torch.no_grad():
            for name, p in ref.named_parameters():
                p.mul_(m[name])
    expected = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    assert torch.equal(flat.flat.detach(), expected)


def test_resnet18_forward_is_the_references_with_avg_pool2d_4_and_its_normalization():
    """Its forward written out as the reference's ResNet (api/model/resnet.py): conv1, GN, relu,
    layer1-4, F.avg_pool2d(out, 4), flatten, linear; bit for bit on CIFAR-shaped input normalized with
    the reference's exact constants."""
    import torch.nn.functional as F

    net = models.build("resnet18", dataset="cifar10", input_shape=(3, 32, 32), n_classes=10, seed=1)
    net.eval()
    mean, std = data.STATS["cifar10"]
    assert mean == (0.49139968, 0.48215827, 0.44653124) and std == (0.24703233, 0.24348505, 0.26158768)
    assert data.STATS["cifar100"] == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    raw = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = TF.normalize(raw, list(mean), list(std))
    with torch.no_grad():
        out = F.relu(net.bn1(net.conv1(x)))
        out = net.layer4(net.layer3(net.layer2(net.layer1(out))))
        expected = net.linear(F.avg_pool2d(out, 4).view(out.size(0), -1))
        assert torch.equal(net(x), expected)
