"""Tiny random models of every supported family, built locally (never downloaded).

Shared by the tests, the export/hub tests and the benchmarks: ``build(name)`` returns a seeded stock
transformers model; ``TINY_FAMILIES`` names every case the parametrised round-trip tests cover.
"""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, vocab_size=99)


def _vit(**kw):
    return ViTConfig(**VISION, intermediate_size=64, **kw)


def _clip_vision():
    return CLIPVisionConfig(**VISION, intermediate_size=64, projection_dim=16)


def _clip():
    return CLIPConfig(
        vision_config=_clip_vision().to_dict(),
        text_config=CLIPTextConfig(
            **TEXT, max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=2
        ).to_dict(),
        projection_dim=16,
    )


def _siglip_vision():
    return SiglipVisionConfig(**VISION, intermediate_size=64)


def _siglip():
    return SiglipConfig(
        vision_config=_siglip_vision().to_dict(),
        text_config=SiglipTextConfig(**TEXT, max_position_embeddings=16, bos_token_id=0, eos_token_id=2).to_dict(),
    )


def _dinov2(swiglu: bool, **kw):
    return Dinov2Config(**VISION, mlp_ratio=4, use_swiglu_ffn=swiglu, **kw)


def _dinov2_registers(swiglu: bool, **kw):
    return Dinov2WithRegistersConfig(**VISION, mlp_ratio=4, use_swiglu_ffn=swiglu, num_register_tokens=2, **kw)


def _bert(**kw):
    return BertConfig(**TEXT, max_position_embeddings=64, **kw)


BUILDERS = {
    "vit": lambda: ViTModel(_vit()),
    "vit_cls": lambda: ViTForImageClassification(_vit(num_labels=5)),
    "clip_vision": lambda: CLIPVisionModel(_clip_vision()),
    "clip_vision_proj": lambda: CLIPVisionModelWithProjection(_clip_vision()),
    "clip": lambda: CLIPModel(_clip()),
    "siglip_vision": lambda: SiglipVisionModel(_siglip_vision()),
    "siglip": lambda: SiglipModel(_siglip()),
    "dinov2": lambda: Dinov2Model(_dinov2(False)),
    "dinov2_swiglu": lambda: Dinov2Model(_dinov2(True)),
    "dinov2_swiglu_cls": lambda: Dinov2ForImageClassification(_dinov2(True, num_labels=4)),
    "dinov2_registers": lambda: Dinov2WithRegistersModel(_dinov2_registers(False)),
    "dinov2_registers_swiglu_cls": lambda: Dinov2WithRegistersForImageClassification(
        _dinov2_registers(True, num_labels=4)
    ),
    "bert": lambda: BertModel(_bert()),
    "bert_cls": lambda: BertForSequenceClassification(_bert(num_labels=3)),
}
TINY_FAMILIES = sorted(BUILDERS)


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


def sample_inputs(model, batch_size: int = 2, seed: int = 1) -> dict:
    """Fresh random inputs for the whole model (CLIP/SigLIP full models get text too)."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    inputs = {}
    vision = getattr(config, "vision_config", None) or (config if hasattr(config, "image_size") else None)
    if vision is not None:
        size = vision.image_size
        inputs["pixel_values"] = torch.randn(batch_size, vision.num_channels, size, size, generator=generator)
    text = getattr(config, "text_config", None) or (config if not hasattr(config, "image_size") else None)
    if text is not None:
        length = 8
        inputs["input_ids"] = torch.randint(1, text.vocab_size, (batch_size, length), generator=generator)
        if "Siglip" not in type(model).__name__:
            mask = torch.ones(batch_size, length, dtype=torch.long)
            mask[0, -2:] = 0
            inputs["attention_mask"] = mask
    return inputs


ST_PROMPTS = {"query": "the ", "document": ""}


def save_tiny_sentence_transformer(root):
    """The tiny BERT built into a real sentence-transformers model (mean pooling, Dense, Normalize, prompts,
    dot-product similarity), saved by sentence-transformers itself to ``root/model``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a cat dog sat on mat big red ran fast".split()]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    build("bert").save_pretrained(root / "bert")
    BertTokenizer(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "bert")
    torch.manual_seed(0)
    transformer = Transformer(str(root / "bert"), max_seq_length=24)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="mean"),
               Dense(TEXT["hidden_size"], 16, activation_function=torch.nn.Tanh()), Normalize()]  # fmt: skip
    model = SentenceTransformer(modules=modules, prompts=ST_PROMPTS, similarity_fn_name="dot", device="cpu")
    model.save(str(root / "model"))
    return root / "model"
