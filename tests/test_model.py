"""CondInst's structure, shapes and inference on small configurations."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from boxinst.models.backbone import BackboneWeightsError, build_backbone
from boxinst.models.condinst import CondInst
from boxinst.models.dynamic_mask_head import DynamicMaskHead
from boxinst.models.layers import aligned_bilinear


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "channels,expected",
    [(16, (10 * 16 + 16 * 16 + 16) + (16 + 16 + 1)), (8, (10 * 8 + 8 * 8 + 8) + (8 + 8 + 1))],
)
def test_dynamic_mask_head_parameter_count(channels, expected):
    # BoxInst's 16-channel head has 465 dynamic parameters, CondInst's 8-channel one 169
    assert DynamicMaskHead(in_channels=8, channels=channels, num_layers=3).num_params == expected


def test_dynamic_mask_head_is_a_per_instance_fcn():
    """Each instance's mask equals the 3-layer FCN written out with its own weights."""
    head = DynamicMaskHead(in_channels=8, channels=4, num_layers=3, feature_stride=8, out_stride=8)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 5, 6, generator=g)
    params = torch.randn(3, head.num_params, generator=g)
    locations = torch.tensor([[12.0, 20.0], [4.0, 4.0], [44.0, 36.0]])
    levels = torch.tensor([0, 1, 2])
    images = torch.tensor([0, 1, 1])
    out = head(features, params, locations, levels, images)
    assert out.shape == (3, 5, 6)

    weights, biases = head.split_params(params)
    for i in range(3):
        ys, xs = torch.meshgrid(torch.arange(5) * 8 + 4.0, torch.arange(6) * 8 + 4.0, indexing="ij")
        soi = [64, 128, 256][i]
        rel = torch.stack([(locations[i, 0] - xs) / soi, (locations[i, 1] - ys) / soi])
        x = torch.cat([rel, features[images[i]]]).reshape(10, -1)
        x = torch.relu(weights[0][i] @ x + biases[0][i])
        x = torch.relu(weights[1][i] @ x + biases[1][i])
        x = weights[2][i] @ x + biases[2][i]
        torch.testing.assert_close(out[i], x.reshape(5, 6))


def test_aligned_bilinear_keeps_input_values_at_cell_centres():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    for factor in (2, 4):
        up = aligned_bilinear(x, factor)
        assert up.shape == (1, 1, 3 * factor, 4 * factor)
        centres = up[0, 0, factor // 2 :: factor, factor // 2 :: factor]
        torch.testing.assert_close(centres, x[0, 0])
    assert aligned_bilinear(x, 1) is x


def test_aligned_bilinear_equals_adelaidet_padding_formulation():
    """The same values as AdelaiDet's ``F.pad(mode="replicate")`` formulation (whose backward
    torch.compile cannot build), gradients equal to float rounding."""

    def padded(x, factor):
        h, w = x.shape[-2:]
        x = F.pad(x, (0, 1, 0, 1), mode="replicate")
        size = (factor * h + 1, factor * w + 1)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
        return x[:, :, : factor * h, : factor * w]

    torch.manual_seed(0)
    for factor in (2, 4, 8):
        x = torch.randn(2, 3, 7, 9, requires_grad=True)
        ours, theirs = aligned_bilinear(x, factor), padded(x, factor)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        upstream = torch.randn_like(ours)
        (ours_grad,) = torch.autograd.grad(ours, x, upstream)
        (theirs_grad,) = torch.autograd.grad(theirs, x, upstream)
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-5)


def test_backbone_matches_torchvision_resnet_and_fpn_sizes():
    backbone = build_backbone(18, norm="BN", trainable_layers=5, out_channels=64)
    resnet = torchvision.models.resnet18()
    assert count(backbone.body) == count(resnet) - count(resnet.fc)
    out = backbone(torch.zeros(1, 3, 128, 192))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [
        (16, 24),
        (8, 12),
        (4, 6),
        (2, 3),
        (1, 2),
    ]
    assert all(v.shape[1] == 64 for v in out.values())


def test_resnet10_is_resnet18_with_one_block_per_stage():
    backbone = build_backbone(10, norm="BN", trainable_layers=5, out_channels=64)
    resnet18 = torchvision.models.resnet18()
    assert [len(getattr(backbone.body, f"layer{i}")) for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    second_blocks = sum(count(getattr(resnet18, f"layer{i}")[1]) for i in (1, 2, 3, 4))
    assert count(backbone.body) == count(resnet18) - count(resnet18.fc) - second_blocks
    out = backbone(torch.zeros(1, 3, 96, 128))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    with pytest.raises(BackboneWeightsError, match="no ImageNet weights"):
        build_backbone(10, weights="DEFAULT")


def test_backbone_freezes_stem_and_res2_by_default():
    backbone = build_backbone(18, norm="FrozenBN", trainable_layers=3)
    trainable = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[0] for n, p in backbone.body.named_parameters() if not p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert frozen == {"conv1", "layer1"}


def test_backbone_loads_weights_from_a_local_file(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone(18, weights=str(path), norm="BN")
    torch.testing.assert_close(
        backbone.body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight
    )


def test_backbone_weights_errors_say_what_to_do(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        build_backbone(18, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneWeightsError, match="neither a file nor a torchvision weights name"):
        build_backbone(18, weights="NOT_A_WEIGHTS_NAME")
    with pytest.raises(ValueError, match="depth"):
        build_backbone(42)


def test_head_parameter_count_follows_the_architecture(make_config):
    cfg = make_config()
    model = CondInst(cfg)
    c, k, p = cfg.fpn_channels, cfg.num_classes, model.mask_head.num_params
    tower = cfg.head_convs * (9 * c * c + 2 * c)  # conv without bias + GroupNorm affine
    predictors = (9 * c * k + k) + (9 * c * 4 + 4) + (9 * c + 1) + (9 * c * p + p)
    assert count(model.head) == 2 * tower + predictors + 5  # + one scale per level
    assert model.head.controller.out_channels == p == 465


def test_forward_shapes_and_mask_resolution(make_config):
    model = CondInst(make_config())
    images = torch.rand(2, 3, 96, 128) * 255
    out = model(images)
    cells = sum((96 // s) * (128 // s) for s in (8, 16, 32)) + 2 * 2 + 1 * 1
    assert out.cls.shape == (2, cells, 3)
    assert out.box.shape == (2, cells, 4) and (out.box >= 0).all()
    assert out.centerness.shape == (2, cells) and out.params.shape == (2, cells, 465)
    assert out.mask_features.shape == (2, 8, 12, 16)
    masks = model.instance_mask_logits(
        out, torch.tensor([0, 1, 1]), torch.tensor([0, 5, cells - 1])
    )
    assert masks.shape == (3, 96 // 4, 128 // 4)  # full-image masks at 1/4 resolution


def test_forward_rejects_unpadded_images(make_config):
    with pytest.raises(ValueError, match="multiples of 32"):
        CondInst(make_config())(torch.zeros(1, 3, 100, 128))


def test_inference_on_an_untrained_model(make_config):
    torch.manual_seed(0)
    model = CondInst(make_config(score_threshold=0.0, detections_per_image=7))
    model.train()
    images = torch.rand(2, 3, 64, 96) * 255
    results = model.predict(
        images, image_sizes=[(60, 90), (64, 96)], output_sizes=[(120, 180), (64, 96)]
    )
    assert model.training  # predict restores the mode
    assert len(results) == 2
    first, second = results
    assert first["boxes"].shape == (7, 4) and first["masks"].shape == (7, 120, 180)
    assert first["masks"].dtype == torch.bool and second["masks"].shape == (7, 64, 96)
    assert (first["scores"][:-1] >= first["scores"][1:]).all()
    assert first["boxes"][:, 0::2].max() <= 180 and first["boxes"][:, 1::2].max() <= 120
    assert first["labels"].max() < 3


def test_a_32_channel_model_predicts_one_image_whose_p7_is_1x1(make_config):
    # GroupNorm(32) of 32 channels would normalise one value per group on P7 (1x1 for 64 px)
    model = CondInst(make_config(fpn_channels=32, score_threshold=1.0)).eval()
    (result,) = model.predict(torch.rand(1, 3, 64, 64) * 255, image_sizes=[(64, 64)])
    assert result["masks"].shape == (0, 64, 64)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 2 for m in norms)


def test_inference_with_no_detection_returns_empty_tensors(make_config):
    model = CondInst(make_config(score_threshold=1.0))
    (result,) = model.predict(torch.rand(1, 3, 64, 64) * 255, image_sizes=[(64, 64)])
    assert result["boxes"].shape == (0, 4) and result["masks"].shape == (0, 64, 64)


def test_backbone_weights_by_name_come_from_torchvision_cache(tmp_path, monkeypatch):
    """A torchvision weights name resolves through torchvision's API and its hub cache."""
    reference = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    backbone = build_backbone(18, weights="IMAGENET1K_V1", norm="BN")
    torch.testing.assert_close(
        backbone.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight
    )


def test_backbone_weights_download_failure_says_how_to_provide_them(tmp_path, monkeypatch):
    def no_network(url, *args, **kwargs):
        raise OSError(f"{url}: Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # the download function torchvision's weights API calls
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(BackboneWeightsError) as error:
        build_backbone(50, weights="IMAGENET1K_V2")
    message = str(error.value)
    assert "resnet50-" in message and "pass its path" in message and str(tmp_path) in message


def test_threshold_with_centerness_filters_on_the_product(make_config):
    """Untrained: class scores sit at the prior 0.01 and centerness near 0.5, so a threshold
    of 0.008 keeps detections on the class score alone and none on the product."""
    torch.manual_seed(0)
    images = torch.rand(1, 3, 64, 64) * 255
    counts = []
    for with_centerness in (False, True):
        model = CondInst(
            make_config(score_threshold=0.008, threshold_with_centerness=with_centerness)
        )
        (result,) = model.predict(images, image_sizes=[(64, 64)])
        counts.append(len(result["scores"]))
    assert counts[0] > 0 and counts[1] == 0
