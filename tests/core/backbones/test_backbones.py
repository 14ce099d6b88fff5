"""Backbone registry and checkpoint-compatibility tests.

The expected state_dict tables below are written out from insightface's
recognition/arcface_torch/backbones/{iresnet,mobilefacenet}.py (module nesting, channel
widths, kernel sizes, groups, bias flags), independently of core/backbones, so that a
refactor that would break loading published checkpoints with strict=True fails here.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from core.backbones import available_backbones, build_backbone, default_input_size
from core.backbones.iresnet import IResNet
from core.backbones.mobilefacenet import MobileFaceNet
from core.backbones.tiny import TinyCNN
from core.errors import ConfigError

Shape = tuple[int, ...]

BN_STATS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> dict[str, Shape]:
    return {f"{prefix}.{s}": ((), (c,))[s != "num_batches_tracked"] for s in BN_STATS}


def expected_iresnet(layers: tuple[int, int, int, int], emb: int = 512,
                     fc_in: int = 512 * 7 * 7) -> dict[str, Shape]:
    """Key -> shape of insightface's IResNet(IBasicBlock, layers, num_features=emb)."""
    t: dict[str, Shape] = {"conv1.weight": (64, 3, 3, 3)}
    t.update(_bn("bn1", 64))
    t["prelu.weight"] = (64,)
    inplanes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            cin = inplanes if i == 0 else planes
            t.update(_bn(f"{p}.bn1", cin))
            t[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            t.update(_bn(f"{p}.bn2", planes))
            t[f"{p}.prelu.weight"] = (planes,)
            t[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            t.update(_bn(f"{p}.bn3", planes))
            if i == 0:  # every stage starts with stride 2, so always a downsample
                t[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                t.update(_bn(f"{p}.downsample.1", planes))
        inplanes = planes
    t.update(_bn("bn2", 512))
    t["fc.weight"] = (emb, fc_in)
    t["fc.bias"] = (emb,)
    t.update(_bn("features", emb))
    return t


def _conv_block(prefix: str, cin: int, cout: int, k: int, groups: int) -> dict[str, Shape]:
    t = {f"{prefix}.layers.0.weight": (cout, cin // groups, k, k)}
    t.update(_bn(f"{prefix}.layers.1", cout))
    t[f"{prefix}.layers.2.weight"] = (cout,)
    return t


def _linear_block(prefix: str, cin: int, cout: int, k: int, groups: int) -> dict[str, Shape]:
    t = {f"{prefix}.layers.0.weight": (cout, cin // groups, k, k)}
    t.update(_bn(f"{prefix}.layers.1", cout))
    return t


def _depthwise(prefix: str, cin: int, cout: int, g: int) -> dict[str, Shape]:
    t = _conv_block(f"{prefix}.layers.0", cin, g, 1, 1)
    t.update(_conv_block(f"{prefix}.layers.1", g, g, 3, g))
    t.update(_linear_block(f"{prefix}.layers.2", g, cout, 1, 1))
    return t


def _residual(prefix: str, c: int, n: int, g: int) -> dict[str, Shape]:
    t: dict[str, Shape] = {}
    for i in range(n):
        t.update(_depthwise(f"{prefix}.layers.{i}", c, c, g))
    return t


def expected_mobilefacenet(emb: int = 512) -> dict[str, Shape]:
    """Key -> shape of insightface's MobileFaceNet(num_features=emb), blocks (1,4,6,2), scale 2."""
    t = _conv_block("layers.0", 3, 128, 3, 1)
    t.update(_conv_block("layers.1", 128, 128, 3, 64))
    t.update(_depthwise("layers.2", 128, 128, 128))
    t.update(_residual("layers.3", 128, 4, 128))
    t.update(_depthwise("layers.4", 128, 256, 256))
    t.update(_residual("layers.5", 256, 6, 256))
    t.update(_depthwise("layers.6", 256, 256, 512))
    t.update(_residual("layers.7", 256, 2, 256))
    t.update(_conv_block("conv_sep", 256, 512, 1, 1))
    t.update(_linear_block("features.layers.0", 512, 512, 7, 512))
    t["features.layers.2.weight"] = (emb, 512)
    t.update(_bn("features.layers.3", emb))
    return t


def _shapes(model: nn.Module) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r50() -> nn.Module:
    return build_backbone("iresnet50")


@pytest.fixture(scope="module")
def mbf() -> nn.Module:
    return build_backbone("mobilefacenet")


# --------------------------------------------------------------------------- iresnet


def test_iresnet50_state_dict_matches_insightface(r50: nn.Module) -> None:
    got = _shapes(r50)
    assert got == expected_iresnet((3, 4, 14, 3))
    # Hand-counted from the source, as a check on the table generator itself:
    # stem 7 + 24 blocks * 18 + 4 downsamples * 6 + head (bn2 5, fc 2, features 5) 12.
    assert len(got) == 475
    assert got["layer3.13.conv2.weight"] == (256, 256, 3, 3)
    assert got["layer2.0.conv1.weight"] == (128, 64, 3, 3)
    assert got["layer2.0.bn1.weight"] == (64,)
    assert got["layer4.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert got["layer4.2.prelu.weight"] == (512,)
    assert got["fc.weight"] == (512, 25088)
    assert got["features.weight"] == (512,)
    assert "layer3.14.conv1.weight" not in got
    assert "layer1.1.downsample.0.weight" not in got
    assert sum(p.numel() for p in r50.parameters()) == 43_590_848


def test_iresnet100_and_18_34_keys_match_insightface() -> None:
    for name, layers in [("iresnet18", (2, 2, 2, 2)), ("iresnet34", (3, 4, 6, 3)),
                         ("iresnet100", (3, 13, 30, 3))]:
        assert _shapes(build_backbone(name)) == expected_iresnet(layers), name


def test_iresnet_embedding_bn_scale_is_frozen_like_arcface(r50: nn.Module) -> None:
    assert not r50.features.weight.requires_grad
    assert torch.all(r50.features.weight == 1.0)
    assert r50.features.bias.requires_grad


def test_iresnet_insightface_style_init_is_still_finite() -> None:
    model = build_backbone("iresnet18", input_size=32, zero_init_residual=False).eval()
    assert all(torch.all(b.bn3.weight == 1.0) for b in model.layer1)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert torch.isfinite(out).all()


def test_iresnet18_other_input_sizes() -> None:
    for size, spatial in [(64, 4), (96, 6), (56, 4)]:
        model = build_backbone("iresnet18", embedding_size=128, input_size=size).eval()
        assert model.fc.in_features == 512 * spatial * spatial
        with torch.no_grad():
            out = model(torch.rand(2, 3, size, size) * 2 - 1)
        assert out.shape == (2, 128)
        assert torch.isfinite(out).all()


# --------------------------------------------------------------------- mobilefacenet


def test_mobilefacenet_state_dict_matches_insightface(mbf: nn.Module) -> None:
    got = _shapes(mbf)
    assert got == expected_mobilefacenet()
    # ConvBlock 7, LinearBlock 6, DepthWise 20: 7+7+20+4*20+20+6*20+20+2*20 + 7 + (6+1+5)
    assert len(got) == 333
    assert got["layers.1.layers.0.weight"] == (128, 2, 3, 3)
    assert got["layers.5.layers.5.layers.1.layers.0.weight"] == (256, 1, 3, 3)
    assert got["layers.6.layers.2.layers.0.weight"] == (256, 512, 1, 1)
    assert got["features.layers.0.layers.0.weight"] == (512, 1, 7, 7)
    assert got["features.layers.2.weight"] == (512, 512)
    assert "features.layers.2.bias" not in got


def test_mobilefacenet_embedding_size_is_configurable() -> None:
    model = build_backbone("mbf", embedding_size=128)
    assert _shapes(model) == expected_mobilefacenet(128)


# ----------------------------------------------------------------- state_dict files


@pytest.mark.parametrize("name", ["iresnet50", "mobilefacenet"])
def test_state_dict_round_trip_strict(name: str, r50: nn.Module, mbf: nn.Module,
                                      tmp_path) -> None:
    src = r50 if name == "iresnet50" else mbf
    path = tmp_path / f"{name}.pt"
    torch.save(src.state_dict(), path)
    fresh = build_backbone(name)
    result = fresh.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for (k, a), (k2, b) in zip(src.state_dict().items(), fresh.state_dict().items()):
        assert k == k2
        assert torch.equal(a, b), k


def test_insightface_style_checkpoint_loads_and_reproduces_outputs() -> None:
    """A checkpoint saved from one instance gives bit-identical embeddings in another."""
    torch.manual_seed(0)
    a = build_backbone("iresnet18", input_size=32).eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_backbone("iresnet18", input_size=32)
    b.load_state_dict(torch.load(buf), strict=True)
    b.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ------------------------------------------------------------------------- registry


def test_available_backbones_and_default_sizes() -> None:
    names = available_backbones()
    assert set(names) == {"iresnet18", "iresnet34", "iresnet50", "iresnet100",
                          "mobilefacenet", "tiny", "mlp"}
    assert default_input_size("mlp") == 8
    assert default_input_size("iresnet50") == 112
    assert default_input_size("mobilefacenet") == 112
    assert default_input_size("r100") == 112
    assert default_input_size("tiny") < 112


def test_registered_classes() -> None:
    assert isinstance(build_backbone("r50", input_size=32), IResNet)
    assert isinstance(build_backbone("mbf"), MobileFaceNet)
    assert isinstance(build_backbone("tiny", input_size=32), TinyCNN)


@pytest.mark.parametrize("name", available_backbones())
def test_output_shape_at_default_input_size(name: str) -> None:
    size = default_input_size(name)
    model = build_backbone(name, embedding_size=256, input_size=size).eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 256)
    assert out.dtype == torch.float32
    # Before any BN statistics exist, eval-mode outputs must stay small enough for fp16
    # autocast (epoch-0 evaluation, a fresh DCQ momentum encoder): the init's purpose.
    assert torch.isfinite(out).all()
    assert out.abs().max() < 1e3


def test_unknown_backbone_names_option_value_and_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone("resnet9000")
    msg = str(info.value)
    assert "--backbone" in msg
    assert "resnet9000" in msg
    for name in available_backbones():
        assert name in msg
    with pytest.raises(ConfigError, match="--backbone"):
        default_input_size("resnet9000")


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="--embedding-size"):
        build_backbone("tiny", embedding_size=0, input_size=32)
    with pytest.raises(ConfigError, match="--input-size"):
        build_backbone("tiny", input_size=8)
    with pytest.raises(ConfigError, match="dropuot"):
        build_backbone("tiny", input_size=32, dropuot=0.1)


def test_the_mlp_takes_small_inputs_that_a_convolutional_backbone_refuses() -> None:
    model = build_backbone("mlp", embedding_size=16, input_size=4)
    assert model(torch.rand(3, 3, 4, 4)).shape == (3, 16)
    with pytest.raises(ConfigError, match="--input-size: expected an integer >= 2"):
        build_backbone("mlp", input_size=1)


# ----------------------------------------------------------------------------- tiny


def test_tiny_output_depends_on_input_and_gradients_reach_first_conv() -> None:
    torch.manual_seed(0)
    model = build_backbone("tiny", embedding_size=64, input_size=32)
    model.train()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    out = model(x)
    assert out.shape == (8, 64)
    # Rows differ from each other (the embedding is not constant) ...
    assert (out[0] - out[1]).abs().max() > 1e-3
    out.pow(2).sum().backward()
    first_conv = model.body[0][0]
    assert isinstance(first_conv, nn.Conv2d)
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0
    # ... and in eval mode, changing one image changes its embedding.
    model.eval()
    with torch.no_grad():
        y1 = model(x)
        x2 = x.clone()
        x2[0] = -x2[0]
        y2 = model(x2)
    assert (y1[0] - y2[0]).abs().max() > 1e-3
    assert torch.allclose(y1[1:], y2[1:], atol=1e-5)
