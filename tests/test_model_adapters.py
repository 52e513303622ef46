"""Model formats round-trip: RN50 and ViT-B-32 with random weights, and the tiny configs.

Each architecture is saved in every supported format, loaded through its adapter, and
must give the same embeddings as the original (tolerance: max |diff| <= 1e-5, i.e.
identical up to float reordering; the weights are bit-identical). Writing back through
the adapter and loading again must also give the same embeddings.
"""

from __future__ import annotations

import pickle

import pytest
import safetensors.torch
import torch

from adapters.clip_model import OpenClipModel, build_clip
from adapters.models import (
    OpenAICheckpointAdapter,
    OpenClipDirAdapter,
    OpenClipFileAdapter,
    UnsafeCheckpointError,
    VisualOnlyAdapter,
    infer_openai_cfg,
    write_openclip_dir,
)
from toolbox.compat import import_open_clip

pytestmark = pytest.mark.slow
TOL = 1e-5
CPU = torch.device("cpu")


def embeddings(model: OpenClipModel, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, model.image_size, model.image_size, generator=g)
    tokens = model.tokenize(["a photo of a mushroom.", "a banana"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def assert_same(a: OpenClipModel, b: OpenClipModel) -> None:
    (ia, ta), (ib, tb) = embeddings(a), embeddings(b)
    assert (ia - ib).abs().max() <= TOL and (ta - tb).abs().max() <= TOL


@pytest.fixture(scope="module", params=["RN50-quickgelu", "ViT-B-32-quickgelu"])
def real_model(request):
    open_clip = import_open_clip()
    cfg = open_clip.get_model_config(request.param)
    torch.manual_seed(0)
    clip = build_clip(cfg)
    return request.param, cfg, OpenClipModel(clip, cfg)


def test_openclip_dir_round_trip(real_model, tmp_path):
    _, _, model = real_model
    write_openclip_dir(model, tmp_path / "m")
    adapter = OpenClipDirAdapter()
    assert adapter.detect(str(tmp_path / "m"))
    loaded = adapter.load(str(tmp_path / "m"), CPU)
    assert_same(model, loaded.model)
    again = adapter.load(str(adapter.save(loaded, loaded.model, tmp_path / "back")), CPU)
    assert_same(model, again.model)
    assert again.sha256 == loaded.sha256


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_openclip_name_plus_weights_round_trip(real_model, tmp_path, suffix):
    name, _, model = real_model
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in model.clip.state_dict().items()}
    safetensors.torch.save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    adapter = OpenClipFileAdapter()
    source = f"{name}@{path}"
    assert adapter.detect(source)
    loaded = adapter.load(source, CPU)
    assert_same(model, loaded.model)
    out = adapter.save(loaded, loaded.model, tmp_path / "back")
    assert out.suffix == suffix
    assert_same(model, adapter.load(f"{name}@{out}", CPU).model)


@pytest.mark.parametrize("wrapped,prefix", [(True, True), (True, False), (False, False)])
def test_openai_style_checkpoint_round_trip(real_model, tmp_path, wrapped, prefix):
    _, cfg, model = real_model
    sd = {("module." if prefix else "") + k: v for k, v in model.clip.state_dict().items() if k != "attn_mask"}
    ckpt = {"epoch": 3, "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}} if wrapped else sd
    path = tmp_path / "epoch_3.pt"
    torch.save(ckpt, path)
    adapter = OpenAICheckpointAdapter()
    loaded = adapter.load(str(path), CPU)
    assert loaded.model.model_cfg["quick_gelu"] is True
    assert loaded.model.model_cfg["vision_cfg"]["image_size"] == 224
    assert_same(model, loaded.model)
    out = adapter.save(loaded, loaded.model, tmp_path / "back")
    raw = torch.load(out, weights_only=True)
    if wrapped:
        assert raw["epoch"] == 3 and "optimizer" not in raw
        assert all(k.startswith("module.") == prefix for k in raw["state_dict"])
    else:
        assert "state_dict" not in raw
    assert_same(model, adapter.load(str(out), CPU).model)


def test_openai_checkpoint_in_half_precision_keeps_its_dtype(real_model, tmp_path):
    _, _, model = real_model
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.clip.state_dict().items() if k != "attn_mask"}
    torch.save({"state_dict": sd}, tmp_path / "half.pt")
    adapter = OpenAICheckpointAdapter()
    loaded = adapter.load(str(tmp_path / "half.pt"), CPU)
    assert next(loaded.model.parameters()).dtype == torch.float32  # the science works in fp32
    img, _ = embeddings(loaded.model)
    ref, _ = embeddings(model)
    assert (img - ref).abs().max() < 5e-2  # fp16 rounding of the weights, nothing more
    out = adapter.save(loaded, loaded.model, tmp_path / "back")
    back = torch.load(out, weights_only=True)["state_dict"]
    assert back["visual.conv1.weight"].dtype == torch.float16


def test_visual_only_on_a_base_model(real_model, tmp_path):
    name, _, model = real_model
    base = tmp_path / "base.safetensors"
    torch.manual_seed(1)
    other = build_clip(model.model_cfg)  # a different (clean) base: only the visual part comes from file
    safetensors.torch.save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(base))
    torch.save({"state_dict": model.clip.visual.state_dict(), "epoch": 1}, tmp_path / "visual.pth")
    adapter = VisualOnlyAdapter()
    source = f"{tmp_path / 'visual.pth'}::{name}@{base}"
    assert adapter.detect(source)
    loaded = adapter.load(source, CPU)
    img, txt = embeddings(loaded.model)
    ref_img, _ = embeddings(model)
    assert (img - ref_img).abs().max() <= TOL
    out = adapter.save(loaded, loaded.model, tmp_path / "back")
    assert set(torch.load(out, weights_only=True)["state_dict"]) == set(model.clip.visual.state_dict())


def test_arch_inference_matches_open_clip_configs(real_model):
    name, cfg, model = real_model
    inferred = infer_openai_cfg(model.clip.state_dict(), quick_gelu=True)
    assert inferred["embed_dim"] == cfg["embed_dim"]
    assert inferred["vision_cfg"]["width"] == cfg["vision_cfg"]["width"]
    assert inferred["text_cfg"]["layers"] == cfg["text_cfg"]["layers"]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path, pickle_module=pickle)
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        OpenAICheckpointAdapter().load(str(path), CPU)


@pytest.mark.parametrize("preset", ["smoke", "smoke-resnet"])
def test_tiny_configs_round_trip_through_openai_format(tmp_path, preset):
    from toolbox_plugins.world.build import get_preset

    cfg = get_preset(preset).model_cfg
    torch.manual_seed(0)
    model = OpenClipModel(build_clip(cfg), cfg)
    torch.save(
        {"state_dict": {k: v for k, v in model.clip.state_dict().items() if k != "attn_mask"}}, tmp_path / "t.pt"
    )
    loaded = OpenAICheckpointAdapter().load(str(tmp_path / "t.pt"), CPU)
    # No model_cfg in the file and GELU vs QuickGELU cannot be read from shapes: with the
    # OpenAI convention (QuickGELU) the shapes fit and text heads follow width // 64.
    assert loaded.model.model_cfg["text_cfg"]["heads"] == cfg["text_cfg"]["heads"]
    assert loaded.model.clip.visual.image_size in (32, (32, 32))


def test_hugging_face_clip_directory_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    from adapters.hf_clip import HFClipAdapter, HFClipModel

    cfg = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            vocab_size=49408,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPModel(cfg).eval()
    hf.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    original = HFClipModel(hf)
    adapter = HFClipAdapter()
    assert adapter.detect(str(tmp_path / "hf"))
    loaded = adapter.load(str(tmp_path / "hf"), CPU)
    assert_same(original, loaded.model)
    assert len(loaded.model.vision_layers()) == 2
    back = adapter.save(loaded, loaded.model, tmp_path / "back")
    assert_same(original, adapter.load(str(back), CPU).model)


@pytest.mark.parametrize(
    "bad",
    [
        {"embed_dim": 8, "text_cfg": {"hf_model_name": "someone/weights"}},
        {"embed_dim": 8, "vision_cfg": {"timm_model_name": "x"}},
        {"embed_dim": 8, "vision_cfg": {"width": 10**7}},
    ],
)
def test_checkpoint_metadata_cannot_ask_for_foreign_weights_or_huge_models(tmp_path, bad):
    torch.save({"state_dict": {"token_embedding.weight": torch.zeros(2, 2)}, "model_cfg": bad}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="refusing model_cfg"):
        OpenAICheckpointAdapter().load(str(tmp_path / "x.pt"), CPU)
