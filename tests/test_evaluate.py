"""Evaluation: every metric against hand-computed values, zero-shot classification and retrieval end to end
on a tiny CLIP, kNN / top-1 on the digits reference ViT, the ``amp-hf eval`` CLI and its report, and the
same kNN numbers under a 2-process ``accelerate launch``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_models
import torch
import torch.nn.functional as F

from amp_hf import PrunePlan, UnsupportedModelError, get_adapter, slice_model
from amp_hf.data import DataConfig
from amp_hf.evaluation.metrics import (
    knn_accuracy,
    mean_cosine,
    neighbour_overlap,
    retrieval_recall,
    topk_accuracy,
)
from amp_hf.evaluation.tasks import evaluate_knn, evaluate_retrieval, evaluate_top1, evaluate_zero_shot
from amp_hf.evaluation.zero_shot import build_text_classifier, cached_text_classifier, image_features
from amp_hf.files.artifacts import EVAL_REPORT_FILE, EVAL_REPORT_SCHEMA
from amp_hf.files.eval_report import EvalResult, read_report, write_report
from amp_hf.reference import read_record, train_reference_vit

REPO = Path(__file__).resolve().parents[1]


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# -- metrics on hand-made examples --------------------------------------------------------------------


def knn_example():
    """Memory bank as 2-D unit vectors at chosen angles, so each cosine to a query is known exactly."""
    angle_a, angle_b, angle_c = (math.degrees(math.acos(s)) for s in (0.98, 0.83, 0.80))
    bank = torch.tensor([unit(angle_a), unit(-angle_b), unit(angle_c), unit(180.0)])
    bank_labels = torch.tensor([0, 1, 1, 0])
    # q0 (label 0) at 0°: cosines A .98, B .83, C .80, D -1.
    # q1 (label 1) on B's direction: cosines B 1, A cos(a+b)=.7025, C cos(b+c)=.3299, D -.83.
    queries = torch.tensor([unit(0.0), unit(-angle_b)])
    return bank, bank_labels, queries, torch.tensor([0, 1])


def test_knn_accuracy_weights_votes_by_exp_similarity_over_temperature():
    bank, bank_labels, queries, labels = knn_example()
    # T = 0.07, q0, k=3: label 0 gets e^(.98/.07) = 1.2e6 against e^(.83/.07) + e^(.80/.07) = 2.3e5 -> correct
    # although label 1 has the majority; q1 is correct at every k. k=10 is clipped to the 4 bank entries.
    assert knn_accuracy(bank, bank_labels, queries, labels, ks=(1, 3, 10), temperature=0.07) == {
        1: 1.0, 3: 1.0, 4: 1.0
    }  # fmt: skip
    # T = 10: weights are nearly equal. q0, k=3: 1.103 (label 0) < 1.087 + 1.083 (label 1) -> wrong; k=4 adds
    # D's e^(-.1) = .905 to label 0: 2.008 < 2.170, still wrong. q1 stays correct (k=4: 1.993 < 2.139).
    assert knn_accuracy(bank, bank_labels, queries, labels, ks=(1, 3, 10), temperature=10.0) == {
        1: 1.0, 3: 0.5, 4: 0.5
    }  # fmt: skip


def test_knn_accuracy_ignores_feature_scale():
    bank, bank_labels, queries, labels = knn_example()
    scaled = knn_accuracy(bank * torch.tensor([[3.0], [0.5], [7.0], [2.0]]), bank_labels, queries * 4, labels,
                          ks=(3,), temperature=10.0)  # fmt: skip
    assert scaled == {3: 0.5}


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 1])
    # top-1 predictions 1, 0, 2: only row 1 is right. Top-2 sets {1,2}, {0,·}, {2,1} hold every label.
    assert topk_accuracy(logits, labels, ks=(1, 2, 5)) == pytest.approx({1: 1 / 3, 2: 1.0, 3: 1.0})


def test_retrieval_recall_both_directions_with_several_captions_per_image():
    images = torch.eye(3)
    # Caption owners: t0, t1 -> image 0; t2 -> image 1; t3 -> image 2.
    texts = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 1.0], [0.2, 0.1, 1.0]])
    owners = torch.tensor([0, 0, 1, 2])
    recall = retrieval_recall(images, texts, owners, ks=(1, 2, 10))
    # Text -> image: t0 and t3 rank their image first, t1 (image 1 closer) and t2 (image 2 closer) second.
    assert recall["text_to_image"] == pytest.approx({1: 0.5, 2: 1.0, 3: 1.0})
    # Image -> text: image 0's best caption is t0 (its own); image 1's best is t1 (image 0's), then t2 (its
    # own); image 2's best is t3 (its own).
    assert recall["image_to_text"] == pytest.approx({1: 2 / 3, 2: 1.0, 4: 1.0})


def test_mean_cosine():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    assert mean_cosine(student, teacher) == pytest.approx((1 / math.sqrt(2) - 1) / 2)


def test_neighbour_overlap():
    student = torch.tensor([unit(0), unit(10), unit(25), unit(90)])
    teacher = torch.tensor([unit(0), unit(10), unit(100), unit(90)])
    # 2 nearest others — student: p0 {1,2}, p1 {0,2}, p2 {1,0}, p3 {2,1};
    #                    teacher: p0 {1,3}, p1 {0,3}, p2 {3,1}, p3 {2,1}  -> shared 1/2, 1/2, 1/2, 2/2.
    assert neighbour_overlap(student, teacher, k=2) == (pytest.approx(0.625), 2)
    # k is clipped to the 3 other samples, which are then always shared.
    assert neighbour_overlap(student, teacher, k=10) == (pytest.approx(1.0), 3)


# -- tiny CLIP: zero-shot classification and retrieval end to end ------------------------------------

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
CLASSNAMES = ["red square", "blue circle", "green square", "blue square"]
TEMPLATES = ("a photo of the {}", "art of the {}", "itap of a {}")


def _shape_image(name: str, shift: int, seed: int):
    from PIL import Image, ImageDraw

    colour, shape = name.split()
    # A seeded noise background makes every image's embedding different.
    image = Image.fromarray(np.random.RandomState(seed).randint(0, 256, (32, 32, 3), dtype=np.uint8))
    box = (4 + shift, 4 + shift, 20 + shift, 20 + shift)
    draw = ImageDraw.Draw(image)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return image


def _word_tokenizer(texts):
    """A word-level tokenizer over ``texts`` that behaves like CLIP's where CLIP's pooling depends on it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {word for text in texts for word in text.split() if word != "{}"} | {"<pad>", "<unk>"}
    # As in CLIP's vocabulary, end-of-text is appended and has the highest id: CLIP pools the text embedding
    # at the highest-id token, which must be the one that has seen the whole prompt.
    vocab = {word: index for index, word in enumerate([*sorted(words), "<eos>"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    end_of_text = [("<eos>", vocab["<eos>"])]
    backend.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=end_of_text)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def _teach_classes(model, tokenizer, pixels, labels, steps: int = 30):
    """A few steps of zero-shot-style training, so the tiny CLIP's predictions depend on the image."""
    prompts = tokenizer([TEMPLATES[0].format(name) for name in CLASSNAMES], padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only lose time to thread synchronisation
    model.train()
    try:
        for _ in range(steps):
            F.cross_entropy(model(**prompts, pixel_values=pixels).logits_per_image, labels).backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()


@pytest.fixture(scope="module")
def clip_setup(tmp_path_factory):
    """A tiny CLIP folder (model, image processor, word-level tokenizer) and a captioned shapes dataset."""
    import datasets
    from transformers import CLIPImageProcessor

    root = tmp_path_factory.mktemp("clip")
    rows = [(index % len(CLASSNAMES), index % 5) for index in range(14)]
    images = [_shape_image(CLASSNAMES[label], shift, seed) for seed, (label, shift) in enumerate(rows)]
    labels = torch.tensor([label for label, _ in rows])
    captions = [
        [f"a photo of the {CLASSNAMES[label]}"] + ([f"a {CLASSNAMES[label]} shape"] if shift % 2 else [])
        for label, shift in rows
    ]
    tokenizer = _word_tokenizer([c for row in captions for c in row] + list(TEMPLATES))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    model = tiny_models.build("clip")
    _teach_classes(model, tokenizer, pixels, labels)

    model_dir = root / "model"
    for part in (model, tokenizer, processor):
        part.save_pretrained(model_dir)
    model.name_or_path = str(model_dir)  # where evaluation finds the processor and tokenizer
    data_dir = root / "shapes"
    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=CLASSNAMES),
        "captions": datasets.Sequence(datasets.Value("string")),
    })  # fmt: skip
    datasets.Dataset.from_dict(
        {"image": images, "label": labels.tolist(), "captions": captions}, features=features
    ).save_to_disk(str(data_dir))
    return {
        "model": model, "tokenizer": tokenizer, "processor": processor, "data_dir": data_dir, "pixels": pixels,
        "labels": labels, "captions": captions,
    }  # fmt: skip


def _stock_clip(setup, texts):
    """CLIP's own forward: normalised text embeddings and image-to-text logits for ``texts``."""
    inputs = setup["tokenizer"](texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return setup["model"](**inputs, pixel_values=setup["pixels"])


def test_text_classifier_is_normalised_mean_over_templates(clip_setup):
    templates = ["a photo of the {}", "art of the {}"]
    with torch.no_grad():
        classifier = build_text_classifier(clip_setup["model"], clip_setup["tokenizer"], CLASSNAMES, templates)
    embeds = _stock_clip(clip_setup, [t.format(c) for c in CLASSNAMES for t in templates]).text_embeds.numpy()
    expected = embeds.reshape(len(CLASSNAMES), len(templates), -1).mean(axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert classifier.shape == (expected.shape[1], len(CLASSNAMES))
    np.testing.assert_allclose(classifier.T.numpy(), expected, atol=1e-5)


def test_zero_shot_matches_clip_logits(clip_setup):
    template = "a photo of the {}"
    stock = _stock_clip(clip_setup, [template.format(c) for c in CLASSNAMES])
    expected_top1 = float((stock.logits_per_image.argmax(dim=1) == clip_setup["labels"]).float().mean())
    classifier = build_text_classifier(clip_setup["model"], clip_setup["tokenizer"], CLASSNAMES, [template])
    with torch.no_grad():
        ours = F.normalize(image_features(clip_setup["model"], clip_setup["pixels"]), dim=1) @ classifier
    cosines = stock.logits_per_image / clip_setup["model"].logit_scale.exp().detach()
    np.testing.assert_allclose(ours.numpy(), cosines.numpy(), atol=1e-5)

    results = evaluate_zero_shot(
        clip_setup["model"], DataConfig(source=str(clip_setup["data_dir"]), split="test", batch_size=5),
        templates=[template], cache_dir=clip_setup["data_dir"].parent / "classifiers",
    )  # fmt: skip
    values = {r.metric: r.value for r in results}
    assert values == pytest.approx({"top1": expected_top1, "top4": 1.0})
    assert expected_top1 > 0.5  # chance is 0.25: the classifier and the images line up
    assert {r.num_samples for r in results} == {14}


def test_text_classifier_cache_is_shared_by_pruned_models(clip_setup, tmp_path, monkeypatch):
    model, tokenizer = clip_setup["model"], clip_setup["tokenizer"]
    templates = ["a photo of the {}", "itap of a {}"]
    classifier, path = cached_text_classifier(model, tokenizer, CLASSNAMES, templates, cache_dir=tmp_path)

    widths = get_adapter(model).widths(model)
    pruned = slice_model(model, PrunePlan(widths, [range(0, w, 2) for w in widths], method="test"))
    monkeypatch.setattr("amp_hf.evaluation.zero_shot.build_text_classifier", lambda *a, **k: pytest.fail("cache not used"))
    reused, reused_path = cached_text_classifier(pruned, tokenizer, CLASSNAMES, templates, cache_dir=tmp_path)
    assert reused_path == path and torch.equal(reused, classifier)  # exact: read back from the cache file
    monkeypatch.undo()

    # Another prompt set is another classifier.
    _, other_path = cached_text_classifier(model, tokenizer, CLASSNAMES, ["art of the {}"], cache_dir=tmp_path)
    assert other_path != path and sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other_path.name])

    # A saved classifier evaluates the pruned model exactly like its own (unchanged) text tower does.
    data = DataConfig(source=str(clip_setup["data_dir"]), split="test", batch_size=8)
    processor = clip_setup["processor"]
    from_file = evaluate_zero_shot(pruned, data, processor, classifier_path=path)
    from_tower = evaluate_zero_shot(pruned, data, processor, tokenizer, templates=templates, cache_dir=tmp_path / "b")
    assert [r.value for r in from_file] == [r.value for r in from_tower]


def test_vision_only_checkpoint_borrows_the_text_tower(clip_setup, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = clip_setup["model"]
    config = CLIPVisionConfig(**{**clip.config.vision_config.to_dict(), "projection_dim": clip.config.projection_dim})
    vision = CLIPVisionModelWithProjection(config).eval()
    vision_prefixes = ("vision_model.", "visual_projection.")
    vision.load_state_dict({k: v for k, v in clip.state_dict().items() if k.startswith(vision_prefixes)})
    data = DataConfig(source=str(clip_setup["data_dir"]), split="test", batch_size=8)
    options = dict(processor=clip_setup["processor"], tokenizer=clip_setup["tokenizer"], templates=TEMPLATES[:2],
                   cache_dir=tmp_path)  # fmt: skip
    borrowed = evaluate_zero_shot(vision, data, text_model=clip, **options)
    own = evaluate_zero_shot(clip, data, **options)
    assert [(r.metric, r.value) for r in borrowed] == [(r.metric, r.value) for r in own]
    with pytest.raises(UnsupportedModelError, match="--text-model"):
        evaluate_zero_shot(vision, data, **options)


def test_retrieval_matches_recall_from_clip_logits(clip_setup):
    captions = [c for row in clip_setup["captions"] for c in row]
    owners = [i for i, row in enumerate(clip_setup["captions"]) for _ in row]
    logits = _stock_clip(clip_setup, captions).logits_per_image.numpy()  # (images, captions)
    expected = {}
    for k in (1, 5, 10):
        nearest_texts = np.argsort(-logits, axis=1)[:, :k]
        expected[("image_to_text_recall", k)] = np.mean(
            [any(owners[t] == i for t in nearest_texts[i]) for i in range(len(logits))]
        )
        nearest_images = np.argsort(-logits.T, axis=1)[:, :k]
        expected[("text_to_image_recall", k)] = np.mean([owners[t] in nearest_images[t] for t in range(len(captions))])

    results = evaluate_retrieval(
        clip_setup["model"], DataConfig(source=str(clip_setup["data_dir"]), split="test", batch_size=4)
    )
    assert {(r.metric, r.k): r.value for r in results} == pytest.approx(expected)
    assert len(captions) > len(clip_setup["captions"])  # some images have two captions


# -- the digits reference ViT: kNN and top-1 ---------------------------------------------------------


@pytest.fixture(scope="module")
def digits_vit(tmp_path_factory):
    return train_reference_vit("digits", cache_dir=tmp_path_factory.mktemp("reference"), progress=False)


def test_reference_vit_is_cached(digits_vit):
    record = read_record(digits_vit)
    assert record["dataset"] == "digits" and record["test_accuracy"] > 0.85
    assert train_reference_vit("digits", cache_dir=digits_vit.parent, progress=False) == digits_vit
    assert read_record(digits_vit) == record  # returned from the cache, not retrained


def test_knn_and_top1_on_the_digits_reference_vit(digits_vit):
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(digits_vit).eval()
    knn = evaluate_knn(model, DataConfig(source="digits", split="test", batch_size=128))
    accuracy = {r.k: r.value for r in knn}
    assert sorted(accuracy) == [10, 20, 100, 200]
    assert accuracy[10] > 0.8  # chance is 0.1
    # The eval pipeline (saved image processor, data loader) reproduces the accuracy measured at training.
    (top1,) = evaluate_top1(model, DataConfig(source="digits", split="test", batch_size=128))
    assert top1.value == pytest.approx(read_record(digits_vit)["test_accuracy"], abs=1e-9)


# -- report and CLI -----------------------------------------------------------------------------------


def test_report_merges_reruns(tmp_path):
    path = tmp_path / EVAL_REPORT_FILE
    write_report([EvalResult("knn", "digits", "test", "accuracy", 0.5, k=10),
                  EvalResult("top1", "digits", "test", "accuracy", 0.7)], path, model="m")  # fmt: skip
    write_report([EvalResult("knn", "digits", "test", "accuracy", 0.6, k=10)], path, model="m")
    rows = {(r["task"], r.get("k")): r["value"] for r in read_report(tmp_path)["results"]}
    assert rows == {("top1", None): 0.7, ("knn", 10): 0.6}


def _cli(argv):
    from amp_hf.cli import main

    return main(argv)


def test_cli_writes_report_beside_the_checkpoint(digits_vit, tmp_path, capsys):
    checkpoint = tmp_path / "vit"
    checkpoint.mkdir()
    for file in digits_vit.iterdir():
        (checkpoint / file.name).write_bytes(file.read_bytes())
    argv = ["eval", str(checkpoint), "--task", "knn", "top1", "fidelity", "--teacher", str(digits_vit),
            "--data", "digits", "--num-samples", "50", "--num-train-samples", "300", "--batch-size", "100"]  # fmt: skip
    assert _cli(argv) == 0
    report = json.loads((checkpoint / EVAL_REPORT_FILE).read_text())
    # The report may be pushed with the checkpoint, so it names the checkpoint relative to itself.
    assert report["schema"] == EVAL_REPORT_SCHEMA and report["model"] == "." and report["timestamp"]
    assert str(tmp_path) not in (checkpoint / EVAL_REPORT_FILE).read_text()
    rows = {(r["task"], r["metric"], r.get("k")): r for r in report["results"]}
    assert set(rows) == {("knn", "accuracy", k) for k in (10, 20, 100, 200)} | {
        ("top1", "accuracy", None), ("fidelity", "mean_cosine", None), ("fidelity", "neighbour_overlap", 10)
    }  # fmt: skip
    for row in report["results"]:
        assert row["dataset"] == "digits" and row["split"] == "test" and row["num_samples"] == 50
        assert 0.0 <= row["value"] <= 1.0 + 1e-6
    assert rows[("knn", "accuracy", 10)]["details"]["num_train_samples"] == 300
    # The teacher is the model itself: identical embeddings and neighbours.
    assert rows[("fidelity", "mean_cosine", None)]["value"] == pytest.approx(1.0, abs=1e-5)
    assert rows[("fidelity", "neighbour_overlap", 10)]["value"] == 1.0  # a ratio of counts: same neighbours
    assert "knn" in capsys.readouterr().out


def test_cli_errors_name_the_fix(digits_vit, clip_setup, tmp_path, capsys):
    checkpoint = str(digits_vit)
    # Tasks the model cannot run fail before anything is embedded.
    assert _cli(["eval", checkpoint, "--task", "knn", "zeroshot", "--output", str(tmp_path / "r.json")]) == 2
    assert "needs a CLIP, SigLIP or open_clip model" in capsys.readouterr().err
    clip_dir = str(clip_setup["data_dir"].parent / "model")
    assert _cli(["eval", clip_dir, "--task", "knn", "top1", "--output", str(tmp_path / "r.json")]) == 2
    assert "no classifier head" in capsys.readouterr().err
    assert _cli(["eval", checkpoint, "--task", "fidelity", "--output", str(tmp_path / "r.json")]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert _cli(["eval", checkpoint, "--task", "retrieval", "--output", str(tmp_path / "r.json")]) == 2
    assert "--data" in capsys.readouterr().err
    assert _cli(["eval", "minilm-not-a-folder", "--task", "knn"]) == 2
    assert "--output" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.multiprocess
def test_two_processes_give_the_same_knn_numbers(digits_vit, tmp_path):
    # 101 queries in batches of 16 leave a ragged last batch that accelerate pads; the padding must be dropped.
    args = ["-m", "amp_hf", "eval", str(digits_vit), "--task", "knn", "--data", "digits", "--num-samples", "101",
            "--num-train-samples", "300", "--batch-size", "16"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs = {
        "single": [sys.executable, *args],
        "launch2": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args],
    }  # fmt: skip
    values = {}
    for name, command in runs.items():
        output = tmp_path / f"{name}.json"
        result = subprocess.run([*command, "--output", str(output)], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        rows = read_report(output)["results"]
        assert {r["num_samples"] for r in rows} == {101}
        values[name] = {r["k"]: r["value"] for r in rows}
    assert values["launch2"] == values["single"]
