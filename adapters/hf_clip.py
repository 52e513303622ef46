"""Hugging Face ``CLIPModel`` directories (optional extra: ``pip install '.[hf]'``).

The wrapper computes features from the towers and projections directly
(``vision_model(...).pooler_output`` -> ``visual_projection``), which is stable across
transformers 4.x and 5.x. Text uses open_clip's tokenizer: OpenAI's CLIP BPE, which is
the vocabulary of HF's CLIP checkpoints too; padding is masked and the EOT token
(49407) is where HF pools.
"""

from __future__ import annotations

import copy
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox import atomic
from toolbox.api import LoadedModel, ModelAdapter, state_dict_sha256
from toolbox.compat import import_open_clip
from toolbox.intake.files import is_regular, read_json, refuse_special

from .clip_model import check_normalisation, fit_to_input
from .limits import check_budget, check_preprocess, hf_params

SIDE_FILES = (
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)


class HFClipModel(nn.Module):
    """The :class:`toolbox.api.ClipModel` protocol over a transformers ``CLIPModel``."""

    def __init__(self, hf: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        open_clip = import_open_clip()
        self.hf = hf
        mean = mean or open_clip.OPENAI_DATASET_MEAN
        std = std or open_clip.OPENAI_DATASET_STD
        check_normalisation(mean, std)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.image_size = int(hf.config.vision_config.image_size)
        self.context_length = int(hf.config.text_config.max_position_embeddings)
        self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        self.train(hf.training)  # follow the wrapped model (see OpenClipModel)

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        pixels = (fit_to_input(images, self.image_size) - self.pixel_mean) / self.pixel_std
        feats = self.hf.visual_projection(self.hf.vision_model(pixel_values=pixels).pooler_output)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        out = self.hf.text_model(input_ids=tokens, attention_mask=(tokens != 0).long())
        feats = self.hf.text_projection(out.pooler_output)
        return F.normalize(feats, dim=-1) if normalize else feats

    def tokenize(self, texts: Sequence[str] | str) -> Tensor:
        return self._tokenizer(texts)

    def token_embedding(self) -> nn.Module:
        """The text tower's token embedding (see OpenClipModel.token_embedding)."""
        return self.hf.text_model.embeddings.token_embedding

    def logit_scale(self) -> float:
        return float(self.hf.logit_scale.detach().exp())

    def text_fingerprint(self) -> str:
        """A hash of everything but the vision tower (see OpenClipModel.text_fingerprint)."""
        return state_dict_sha256(self, ("hf.vision_model.", "hf.visual_projection."))

    def vision_layers(self) -> OrderedDict[str, nn.Module]:
        return OrderedDict(
            (f"hf.vision_model.encoder.layers.{i}", layer)
            for i, layer in enumerate(self.hf.vision_model.encoder.layers)
        )

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.hf.logit_scale.exp()

    def clone(self) -> HFClipModel:
        return copy.deepcopy(self)

    @property
    def arch(self) -> str:
        v, t = self.hf.config.vision_config, self.hf.config.text_config
        return (
            f"HF-CLIP ViT(w{v.hidden_size},l{v.num_hidden_layers},p{v.patch_size})@{v.image_size}"
            f"/text(w{t.hidden_size},l{t.num_hidden_layers})/d{self.hf.config.projection_dim}"
        )


def _read_json(path: Path) -> dict[str, Any]:
    """For detection: a JSON object, or {} for anything else (a FIFO is never opened)."""
    try:
        doc = read_json(path, "model config") if is_regular(path) else {}
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _config(path: Path, name: str, required: bool) -> dict[str, Any]:
    """A JSON object of the model folder, strictly read (a missing optional one is {})."""
    if not required and not (path / name).exists():
        return {}
    doc = read_json(path / name, "model config")
    if not isinstance(doc, dict):
        raise ValueError(f"{path / name} is not a JSON object")
    return doc


class HFClipAdapter(ModelAdapter):
    name = "hf-clip"
    summary = "Hugging Face CLIPModel directory (config.json model_type 'clip'); needs the hf extra."
    reference = "transformers CLIPModel.save_pretrained layout"

    def detect(self, source: str) -> bool:
        path = Path(source)
        return path.is_dir() and _read_json(path / "config.json").get("model_type") == "clip"

    def load(self, source: str, device: torch.device) -> LoadedModel:
        path = Path(source)
        refuse_special(path, "model folder")  # transformers opens the files it finds there itself
        if not any(path.glob("*.safetensors")):
            raise ValueError(
                f"{path}: only safetensors weights are read for Hugging Face models "
                f"(a pickled pytorch_model.bin is not unpickled); convert it first"
            )
        check_budget(hf_params(_config(path, "config.json", True), str(path)), str(path))  # before allocating
        pre = check_preprocess(
            _config(path, "preprocessor_config.json", False),
            str(path / "preprocessor_config.json"),
            "image_mean",
            "image_std",
            None,  # HF's size is resize settings; the model's input size is vision_config.image_size
        )
        try:
            from transformers import CLIPModel
        except ImportError as err:
            raise RuntimeError(
                "Hugging Face CLIP directories need transformers: pip install 'invertune-toolbox[hf]'"
            ) from err
        hf = CLIPModel.from_pretrained(str(path), use_safetensors=True).float().eval()
        model = HFClipModel(hf, pre.get("image_mean"), pre.get("image_std")).to(device)
        return LoadedModel(
            model=model,
            format=self.name,
            source=source,
            arch=model.arch,
            sha256=state_dict_sha256(model.hf),
            save_info={"source_dir": str(path)},
        )

    def save(self, loaded: LoadedModel, model, out_dir: Path) -> Path:
        src = Path(loaded.save_info["source_dir"])
        with atomic.atomic_dir(out_dir) as tmp:
            model.hf.save_pretrained(str(tmp), safe_serialization=True)
            for name in SIDE_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
        return Path(out_dir)
