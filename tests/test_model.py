"""The neck and detectors, checked against the structure in docs/architecture.md (the neck: LFE, GAU and MIC)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from siefpn_deploy.core.config import load_config
from siefpn_deploy.model import (
    FPN,
    GAU,
    LFE,
    MIC,
    DualSIEFPN,
    LastLevelMaxPool,
    LastLevelP6P7,
    ShapeSpec,
    build_backbone,
    build_detector,
)

ARCHS = ["retinanet", "faster_rcnn", "mask_rcnn"]
BACKBONES = {"resnet18": 64, "resnet34": 64, "resnet50": 256, "resnet101": 256}  # c2 channels


def small_cfg(arch: str, backbone: str = "resnet18", neck: str = "dual_sie_fpn", channels: int = 32):
    return load_config(None, [
        "MODEL.META_ARCHITECTURE", arch, "MODEL.BACKBONE", backbone, "MODEL.NECK", neck,
        "MODEL.FPN_OUT_CHANNELS", str(channels), "MODEL.BACKBONE_NORM", "BN", "MODEL.FREEZE_AT", "0",
        "MODEL.ROI_BOX_HEAD_DIM", "64", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
    ])


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def expected_lfe(c: int) -> int:
    # gate: conv3x3 then conv1x1; a: three 3x3 convs; SE: Linear C->C/16, Linear C/16->C; 3 fusion logits
    r = c // 16
    return conv(3, c, c) + conv(1, c, c) + 3 * conv(3, c, c) + (c * r + r) + (r * c + c) + 3


def expected_mic(cin: int, c: int) -> int:
    return conv(1, cin, c, bias=False) + bn(c) + 3 * (conv(3, c, c, bias=False) + bn(c))


def expected_gau(c: int) -> int:
    inter = c // 2
    return 3 * conv(1, c, inter) + conv(1, inter, c) + bn(c)


@pytest.mark.parametrize("c", [64, 256])
def test_part_parameter_counts_follow_design(c):
    assert n_params(LFE(channels=c)) == expected_lfe(c)
    assert n_params(MIC(in_channels=2 * c, out_channels=c)) == expected_mic(2 * c, c)
    assert n_params(GAU(channels=c)) == expected_gau(c)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_neck_parameter_counts_and_sharing(arch, backbone):
    c = 32
    neck = build_backbone(small_cfg(arch, backbone, channels=c)).neck
    c2 = BACKBONES[backbone]
    cins = [c2 * 2**i for i in range(4)][1 if arch == "retinanet" else 0 :]
    expected = sum(conv(1, cin, c) for cin in cins) + len(cins) * conv(3, c, c)
    expected += expected_lfe(c) + expected_gau(c) + sum(expected_mic(cin, c) for cin in cins)
    if arch == "retinanet":
        expected += conv(3, cins[-1], c) + conv(3, c, c)  # P6 from C5, P7 from relu(P6)
    assert n_params(neck) == expected
    # one LFE and one GAU shared by all levels, one MIC per level
    assert sum(isinstance(m, LFE) for m in neck.modules()) == 1
    assert sum(isinstance(m, GAU) for m in neck.modules()) == 1
    assert sum(isinstance(m, MIC) for m in neck.modules()) == len(cins)
    assert n_params(neck.lfe) == expected_lfe(c) and n_params(neck.gau) == expected_gau(c)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_output_names_shapes_and_strides(arch, backbone):
    c = 32
    model = build_backbone(small_cfg(arch, backbone, channels=c)).eval()
    h, w = 128, 160
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    names = ["p3", "p4", "p5", "p6", "p7"] if arch == "retinanet" else ["p2", "p3", "p4", "p5", "p6"]
    assert list(out) == names
    shapes = model.output_shape()
    assert list(shapes) == names
    for name, feat in out.items():
        stride = 2 ** int(name[1:])
        assert shapes[name] == ShapeSpec(channels=c, stride=stride)
        assert feat.shape == (2, c, -(-h // stride), -(-w // stride)), name


@pytest.mark.parametrize("neck_cls", [FPN, DualSIEFPN])
def test_neck_follows_lateral_size_for_odd_levels(neck_cls):
    # 352 / 32 = 11: the coarse level is odd, so a fixed 2x upsample would be off by one
    shapes = {"c3": ShapeSpec(16, 8), "c4": ShapeSpec(24, 16), "c5": ShapeSpec(32, 32)}
    neck = neck_cls(in_shapes=shapes, out_channels=16, top_block=LastLevelMaxPool()).eval()
    feats = {"c3": torch.rand(1, 16, 44, 40), "c4": torch.rand(1, 24, 22, 20), "c5": torch.rand(1, 32, 11, 10)}
    with torch.no_grad():
        out = neck(feats)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(44, 40), (22, 20), (11, 10), (6, 5)]


def reference_gau(gau: GAU, m: torch.Tensor, size) -> torch.Tensor:
    """The non-local block written out by hand: f = theta^T phi, softmax over phi positions, y = f g."""
    b, c, h, w = m.shape
    theta = gau.theta(m).view(b, c // 2, -1).permute(0, 2, 1)  # [B, HW, C/2]
    phi = F.max_pool2d(gau.phi(m), 2).view(b, c // 2, -1)  # [B, C/2, HW/4]
    g = F.max_pool2d(gau.g(m), 2).view(b, c // 2, -1).permute(0, 2, 1)  # [B, HW/4, C/2]
    f = torch.softmax(torch.matmul(theta, phi), dim=-1)
    y = torch.matmul(f, g).permute(0, 2, 1).reshape(b, c // 2, h, w)
    z = gau.bn(gau.out(y)) + m
    return F.interpolate(z, size=size, mode="bilinear", align_corners=False)


def test_gau_matches_reference_non_local_block():
    torch.manual_seed(0)
    gau = GAU(channels=32)
    with torch.no_grad():  # non-zero BN so the attention branch contributes
        gau.bn.weight.uniform_(0.5, 1.5)
        gau.bn.bias.uniform_(-0.5, 0.5)
        gau.bn.running_mean.uniform_(-0.2, 0.2)
        gau.bn.running_var.uniform_(0.5, 2.0)
    gau.eval()
    m = torch.randn(2, 32, 11, 10)
    with torch.no_grad():
        ours, ref = gau(m, (22, 20)), reference_gau(gau, m, (22, 20))
    assert ours.shape == (2, 32, 22, 20)
    assert (ours - ref).abs().max().item() < 1e-5
    # the attention branch matters: the result is not just upsampled M
    assert (ours - F.interpolate(m, size=(22, 20), mode="bilinear", align_corners=False)).abs().max() > 1e-2


def test_gau_starts_as_identity_and_lfe_weights_start_equal():
    gau = GAU(channels=16).eval()
    m = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(gau.non_local(m), m)
    assert torch.allclose(torch.softmax(LFE(channels=16).fusion_logits, 0), torch.full((3,), 1 / 3))


def test_gradients_reach_every_neck_parameter():
    torch.manual_seed(0)
    shapes = {"c3": ShapeSpec(16, 8), "c4": ShapeSpec(24, 16), "c5": ShapeSpec(32, 32)}
    neck = DualSIEFPN(in_shapes=shapes, out_channels=16, top_block=LastLevelP6P7(in_channels=32, out_channels=16))
    feats = {"c3": torch.rand(2, 16, 16, 16), "c4": torch.rand(2, 24, 8, 8), "c5": torch.rand(2, 32, 4, 4)}
    sum((o ** 2).mean() for o in neck(feats).values()).backward()
    # at init the GAU's BN weight is 0, which blocks its inner convs by design; everything else learns
    blocked = {n for n, _ in neck.gau.named_parameters(prefix="gau") if not n.startswith("gau.bn")}
    for name, p in neck.named_parameters():
        assert p.grad is not None, name
        assert (p.grad.abs().sum() > 0) != (name in blocked), name
    neck.zero_grad()
    with torch.no_grad():
        neck.gau.bn.weight.fill_(1.0)
    sum((o ** 2).mean() for o in neck(feats).values()).backward()
    for name, p in neck.named_parameters():
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ARCHS)
def test_detector_trains_and_predicts(arch):
    torch.manual_seed(0)
    model = build_detector(small_cfg(arch), num_classes=3)
    h, w = 128, 160
    masks = torch.zeros(1, h, w, dtype=torch.uint8)
    masks[0, 20:80, 30:100] = 1
    targets = [{"boxes": torch.tensor([[30.0, 20.0, 100.0, 80.0]]), "labels": torch.tensor([2]), "masks": masks}]
    losses = model([torch.rand(3, h, w)], targets)
    expected = {"retinanet": {"classification", "bbox_regression"}}.get(
        arch, {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    ) | ({"loss_mask"} if arch == "mask_rcnn" else set())
    assert set(losses) == expected
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 100, 140)])
    assert out["boxes"].shape[1] == 4 and out["boxes"].shape[0] == out["scores"].shape[0] <= 100
    if arch == "mask_rcnn":
        assert out["masks"].shape[1:] == (1, 100, 140)  # pasted at the input image's size


def test_plain_fpn_is_selectable_and_smaller():
    dual = build_backbone(small_cfg("retinanet", neck="dual_sie_fpn")).neck
    fpn = build_backbone(small_cfg("retinanet", neck="fpn")).neck
    assert isinstance(fpn, FPN) and not isinstance(fpn, DualSIEFPN)
    assert n_params(dual) > n_params(fpn)
    assert fpn.output_shape() == dual.output_shape()


def test_imagenet_weights_offline_is_one_clear_error(tmp_path, monkeypatch):
    from siefpn_deploy.core.errors import UserError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: nothing to load, nothing downloaded
    cfg = small_cfg("retinanet")
    cfg.MODEL.BACKBONE_WEIGHTS = "imagenet"
    with pytest.raises(UserError) as e:
        build_backbone(cfg)
    assert "resnet18-f37072fd.pth" in str(e.value) and "\n" not in str(e.value)


def test_backbone_weights_load_from_a_local_file(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    cfg = small_cfg("faster_rcnn")
    cfg.MODEL.BACKBONE_WEIGHTS = str(path)
    body = build_backbone(cfg).body
    assert torch.equal(body["layer3"][0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(body["conv1"].weight, source.conv1.weight)
