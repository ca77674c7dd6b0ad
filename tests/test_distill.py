"""Distillation: losses against hand computations, feature choice per family, fail-fast pairing checks,
augmentations and schedules; real 2-process DDP runs under `accelerate launch` (resume is bit-exact)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from tiny_models import TINY_FAMILIES, VISION, build, sample_inputs
from transformers import AutoModel, ViTConfig, ViTModel

import amp_hf
from amp_hf import PrunePlan, get_adapter, save_pruned, slice_model
from amp_hf.cli import main as cli_main
from amp_hf.data import (
    DataConfig,
    ProcessedDataset,
    default_image_processor,
    make_loader,
    model_inputs,
    prepare_dataset,
)
from amp_hf.distill import DistillConfig, entropy_kl, logit_kd, masked_mse
from amp_hf.distill.augment import AugmentedImages, ImageAugmentation, random_resized_crop_box
from amp_hf.distill.config import AugmentConfig, LossConfig, OptimConfig, ScheduleConfig
from amp_hf.distill.features import FeatureModel, split_features
from amp_hf.distill.losses import distillation_losses
from amp_hf.distill.pairing import load_pair, select_trainable
from amp_hf.distill.run_state import resume_checkpoint, write_run_config
from amp_hf.distill.schedule import build_optimizer, build_schedule
from amp_hf.files.config_utils import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def save_pair(root: Path, name: str = "vit", keep: float = 0.5, seed: int = 0) -> tuple[Path, Path]:
    """A tiny stock teacher and a randomly pruned student of it, saved as folders."""
    teacher = build(name)
    teacher.save_pretrained(root / "teacher")
    widths = get_adapter(teacher).widths(teacher)
    generator = torch.Generator().manual_seed(seed)
    kept = [torch.randperm(w, generator=generator)[: int(w * keep)] for w in widths]
    plan = PrunePlan(widths, kept, method="random")
    save_pruned(slice_model(teacher, plan), root / "student", plan=plan)
    return root / "teacher", root / "student"


# -- losses ---------------------------------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_entropy_kl_matches_hand_computation():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    temp_inv = 15.0

    def similarity_probabilities(z):
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return _softmax(z @ z.T * temp_inv)

    p_s, p_t = similarity_probabilities(student), similarity_probabilities(teacher)
    forward = np.mean([np.sum(p_t[i] * np.log(p_t[i] / p_s[i])) for i in range(6)])
    backward = np.mean([np.sum(p_s[i] * np.log(p_s[i] / p_t[i])) for i in range(6)])
    expected = 0.5 * (forward + backward)

    got = entropy_kl(torch.tensor(student), torch.tensor(teacher), temp_inv)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert entropy_kl(torch.tensor(teacher), torch.tensor(teacher), temp_inv).item() == pytest.approx(0, abs=1e-6)


def test_masked_mse_ignores_padding_and_logit_kd_matches_hand_computation():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    expected = np.mean([((student[b, t] - teacher[b, t]) ** 2).mean() for b in range(2) for t in range(4) if mask[b, t]])
    got = masked_mse(torch.tensor(student), torch.tensor(teacher), torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-5)

    s_logits, t_logits, temperature = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)), 2.0
    p_t, p_s = _softmax(t_logits / temperature), _softmax(s_logits / temperature)
    expected_kd = np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1)) * temperature**2
    got_kd = logit_kd(torch.tensor(s_logits), torch.tensor(t_logits), temperature)
    assert got_kd.item() == pytest.approx(expected_kd, rel=1e-5)


# -- what is distilled ------------------------------------------------------------------------------

# The final norm of each family, applied to the last block's output, gives the model's normed output.
FINAL_NORM_CHECKS = {
    "vit": lambda bb, h, out: torch.allclose(bb.layernorm(h), out.last_hidden_state, atol=1e-5),
    "dinov2": lambda bb, h, out: torch.allclose(bb.layernorm(h), out.last_hidden_state, atol=1e-5),
    "dinov2_with_registers": lambda bb, h, out: torch.allclose(bb.layernorm(h), out.last_hidden_state, atol=1e-5),
    "siglip": lambda bb, h, out: torch.allclose(bb.post_layernorm(h), out.last_hidden_state, atol=1e-5),
    "clip": lambda bb, h, out: torch.allclose(bb.post_layernorm(h[:, 0]), out.pooler_output, atol=1e-5),
    # no final norm; exact: the same forward ops on the same inputs in one process
    "bert": lambda bb, h, out: torch.equal(h, out.last_hidden_state),
}


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_features_are_the_last_block_output_before_the_final_norm(name):
    model = build(name)
    adapter = get_adapter(model)
    inputs = {k: v for k, v in sample_inputs(model).items() if (k == "pixel_values") == (adapter.modality == "image")}
    captured = []
    hook = adapter.layers(model)[-1].register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        features = FeatureModel(model, adapter)(**inputs)["hidden"]
        backbone = adapter.backbone(model)
        outputs = backbone(**inputs)
    hook.remove()
    assert torch.equal(features, captured[0])  # exact: the hook captured this very forward pass
    assert FINAL_NORM_CHECKS[adapter.name](backbone, features, outputs)
    split = split_features({"hidden": features}, inputs, adapter.summary)
    if adapter.summary == "mean":  # no CLS token (SigLIP): the summary is the token mean
        assert torch.allclose(split.summary, features.mean(dim=1))
    else:
        # exact: the summary is an index into the features, nothing is computed
        assert torch.equal(split.summary, features[:, 0]) and split.tokens.shape[1] == features.shape[1] - 1


# Downstream of the last block: final norms, projection, classifier, and CLIP's whole text tower.
EXPECTED_FROZEN = {
    "vit_cls": ("classifier.weight", "vit.layernorm.weight"),
    "clip": ("visual_projection.weight", "vision_model.post_layernorm.bias", "text_model.encoder.layers.0.mlp.fc1.weight"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FROZEN))
def test_head_is_frozen_at_teacher_values_and_blocks_train(tmp_path, name):
    teacher_path, student_path = save_pair(tmp_path, name)
    pair = load_pair(str(teacher_path), str(student_path))
    with torch.no_grad():  # pretend the student's head drifted (e.g. fine-tuned after pruning)
        for parameter in pair.student.parameters():
            parameter.add_(0.5)
    frozen = set(select_trainable(pair, freeze_head=True, train_logits=False))
    teacher_state = pair.teacher.state_dict()
    trainable = {n for n, p in pair.student.named_parameters() if p.requires_grad}
    assert frozen and trainable and not frozen & trainable
    layers = get_adapter(pair.student).layers_path(pair.student)
    assert all(n.startswith(layers) or "embeddings" in n or "pre_layrnorm" in n for n in trainable)
    for tensor in EXPECTED_FROZEN[name]:
        assert tensor in frozen
        assert torch.equal(pair.student.state_dict()[tensor], teacher_state[tensor])  # frozen: copied values


def test_distillation_losses_combine_enabled_terms():
    hidden_s, hidden_t = torch.randn(4, 5, 8), torch.randn(4, 5, 8)
    s = split_features({"hidden": hidden_s}, {}, "cls")
    t = split_features({"hidden": hidden_t}, {}, "cls")
    losses = distillation_losses(s, t, LossConfig(cls=2.0, tokens=1.0, entropy=0.5))
    assert set(losses) == {"cls", "tokens", "entropy", "total"}
    expected = 2 * losses["cls"] + losses["tokens"] + 0.5 * losses["entropy"]
    assert losses["total"].item() == pytest.approx(expected.item())
    assert losses["cls"].item() == pytest.approx(((hidden_s[:, 0] - hidden_t[:, 0]) ** 2).mean().item())


def test_text_batches_are_tokenised_and_padding_is_left_out_of_the_token_loss(tmp_path):
    from transformers import BertTokenizer

    from amp_hf.distill.trainer import build_training_dataset

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a cat dog sat on mat big red ran fast".split()]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    teacher, student = save_pair(tmp_path, "bert")
    tokenizer.save_pretrained(student)
    texts = datasets.Dataset.from_dict({"text": ["the cat sat", "a big red dog ran fast on the mat"]})
    texts.save_to_disk(tmp_path / "texts")
    overrides = [f"teacher={teacher}", f"student={student}", "output=o", f"data.source={tmp_path / 'texts'}"]
    config = load_config(DistillConfig, None, overrides)
    pair = load_pair(config.teacher, config.student)
    dataset = build_training_dataset(config, pair)
    inputs = model_inputs(dataset.collate([dataset[0], dataset[1]]))
    assert inputs["attention_mask"].tolist()[0].count(0) > 0  # the short text is padded

    with torch.no_grad():
        s = split_features(FeatureModel(pair.student, pair.adapter)(**inputs), inputs, "cls")
        t = split_features(FeatureModel(pair.teacher, pair.adapter)(**inputs), inputs, "cls")
    loss = distillation_losses(s, t, LossConfig())["tokens"]
    padded = s.token_mask == 0
    s.tokens[padded] += 100.0  # whatever the student emits at padding must not count
    assert distillation_losses(s, t, LossConfig())["tokens"].item() == pytest.approx(loss.item())


def test_logit_loss_needs_a_classifier_head(tmp_path, capsys):
    teacher, student = save_pair(tmp_path, "vit")
    code = cli_main(["distill", f"teacher={teacher}", f"student={student}", f"output={tmp_path / 'o'}", "loss.logits=1"])
    assert code == 2 and "needs a classification head" in capsys.readouterr().err


# -- fail fast ------------------------------------------------------------------------------------------


def _bad_pair(root: Path, case: str) -> tuple[Path, Path]:
    teacher, student = save_pair(root, "vit")
    other = root / "other"
    if case == "student not pruned":
        return teacher, teacher
    if case == "teacher of another family":
        build("bert").save_pretrained(other)
    elif case == "teacher of another class":
        build("vit_cls").save_pretrained(other)
    elif case == "hidden size":
        ViTModel(ViTConfig(**{**VISION, "hidden_size": 48}, intermediate_size=64)).save_pretrained(other)
    elif case == "layer count":
        ViTModel(ViTConfig(**{**VISION, "num_hidden_layers": 2}, intermediate_size=64)).save_pretrained(other)
    elif case == "pruned from other widths":
        ViTModel(ViTConfig(**VISION, intermediate_size=96)).save_pretrained(other)
    elif case == "teacher is pruned":
        return student, student
    return other, student


BAD_PAIRS = {
    "student not pruned": "is not a pruned checkpoint",
    "teacher of another family": "teacher is a bert model",
    "teacher of another class": "was pruned from a ViTModel",
    "hidden size": "hidden size differs",
    "layer count": "layer count differs",
    "pruned from other widths": "pruned from a model with MLP widths",
    "teacher is pruned": "is itself a pruned checkpoint",
}


@pytest.mark.parametrize("case", sorted(BAD_PAIRS))
def test_bad_pairs_fail_before_training(tmp_path, capsys, case):
    teacher, student = _bad_pair(tmp_path, case)
    output = tmp_path / "out"
    code = cli_main(["distill", f"teacher={teacher}", f"student={student}", f"output={output}", "data.source=digits"])
    assert code == 2
    assert BAD_PAIRS[case] in capsys.readouterr().err
    assert not output.exists() and not Path(f"{output}.run").exists()  # nothing started


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="teacher is required"):
        load_config(DistillConfig, None, ["student=s", "output=o"])
    with pytest.raises(ConfigError, match="set loss.logits > 0"):
        load_config(DistillConfig, None, ["teacher=t", "student=s", "output=o", "freeze_head=false"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(DistillConfig, None, ["teacher=t", "student=s", "output=o", "optim.lr=1"])


def test_resume_refuses_a_changed_config_or_missing_checkpoint(tmp_path):
    args = ["teacher=t", "student=s", f"output={tmp_path / 'out'}"]
    config = load_config(DistillConfig, None, args)
    with pytest.raises(FileNotFoundError, match="start without --resume"):
        resume_checkpoint(config, resume=True)
    write_run_config(config)
    (config.run_path / "checkpoints" / "step_00000004").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="pass --resume"):
        resume_checkpoint(config, resume=False)
    assert resume_checkpoint(config, resume=True).name == "step_00000004"
    changed = load_config(DistillConfig, None, [*args, "optim.base_lr=0.5", "schedule.stop_after=2"])
    with pytest.raises(ConfigError, match="optim.base_lr"):  # stop_after may change, the lr may not
        resume_checkpoint(changed, resume=True)


# -- augmentations and schedule ---------------------------------------------------------------------------


def test_random_resized_crop_boxes_respect_scale_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(40, 30, (0.2, 1.0), rng)
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        area = (right - left) * (bottom - top) / (40 * 30)
        assert 0.18 <= area <= 1.0  # rounding of the side lengths
        assert 0.7 <= (right - left) / (bottom - top) <= 1.45


@pytest.mark.parametrize("kind", ["crop_flip", "dino"])
@pytest.mark.parametrize("channels", [3, 1])
def test_augmentations_are_seeded_per_seed_epoch_and_sample(kind, channels):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(3)]
    source = ProcessedDataset(datasets.Dataset.from_dict({"image": images}), None, "image", DataConfig())
    config = ViTConfig(**VISION, num_channels=channels)
    augmentation = ImageAugmentation.for_model(None, config, AugmentConfig(kind=kind))
    data, other_seed = AugmentedImages(source, augmentation, seed=7), AugmentedImages(source, augmentation, seed=8)
    first = data[1]
    assert first.shape == (channels, 32, 32) and first.dtype == torch.float32
    assert first.min() >= -1 and first.max() <= 1  # rescaled to [0, 1], then (x - 0.5) / 0.5
    assert torch.equal(first, data[1])  # same (seed, epoch, index): same augmentation
    assert not torch.equal(first, other_seed[1])
    data.set_epoch(1)
    assert not torch.equal(first, data[1])  # a new epoch draws new crops
    data.set_epoch(0)
    assert torch.equal(first, data[1])


def test_schedule_warms_up_then_follows_cosines_and_scales_lr_with_batch():
    optim = OptimConfig(base_lr=1e-3, min_lr=1e-5, weight_decay=0.04, weight_decay_end=0.2)
    schedule = build_schedule(optim, ScheduleConfig(epochs=2, warmup_epochs=0.5), steps_per_epoch=10, global_batch=512)
    assert (schedule.total_steps, schedule.warmup_steps) == (20, 5)
    assert schedule.peak_lr == pytest.approx(2e-3)  # 1e-3 * 512 / 256
    assert [schedule.lr(s) for s in range(5)] == pytest.approx([4e-4, 8e-4, 1.2e-3, 1.6e-3, 2e-3])
    assert schedule.lr(19) == pytest.approx(1e-5)
    assert all(schedule.lr(s) >= schedule.lr(s + 1) for s in range(5, 19))
    assert (schedule.wd(0), schedule.wd(19)) == pytest.approx((0.04, 0.2))
    assert schedule.wd(19 / 2) == pytest.approx(0.12)

    model = build("vit")
    optimizer = build_optimizer(model, optim)
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    schedule.apply(optimizer, 19)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == pytest.approx(0.2) and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in no_decay["params"]) and all(p.ndim >= 2 for p in decay["params"])


# -- real runs ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def accelerate_distill(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    command = [*launcher, "--main_process_port", str(_free_port()), "-m", "amp_hf", "distill", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def save_digits(path: Path, start: int, count: int) -> Path:
    """``count`` sklearn digits as a save_to_disk dataset (quicker to open than the built-in source)."""
    images = (load_digits().images[start : start + count] * 255 / 16).astype(np.uint8)
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in images]}, features=features).save_to_disk(path)
    return path


# 64 digits, 8 per process and step: 4 steps per epoch, so stopping at 5 resumes inside the second epoch.
RUN_ARGS = [
    "data.batch_size=8",
    "schedule.max_steps=8",
    "schedule.warmup_steps=1",
    "optim.base_lr=0.002",
    "logging.every_steps=1",
    "checkpointing.every_steps=3",
]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher, student = save_pair(root, "vit")
    data = save_digits(root / "digits", start=0, count=64)
    args = [f"teacher={teacher}", f"student={student}", f"data.source={data}", *RUN_ARGS]
    accelerate_distill(*args, f"output={root / 'full'}")
    return root, teacher, student, args


def _fixed_batch_loss(teacher, student, heldout: Path) -> float:
    """Default distillation loss of ``student`` against ``teacher`` on held-out digits (eval preprocessing)."""
    adapter = get_adapter(student)
    processor = default_image_processor(student.config)
    data = prepare_dataset(DataConfig(source=str(heldout)), processor, adapter, student)
    inputs = model_inputs(next(iter(make_loader(data, batch_size=32))))
    with torch.no_grad():
        s = split_features(FeatureModel(student.eval(), adapter)(**inputs), inputs, adapter.summary)
        t = split_features(FeatureModel(teacher.eval(), adapter)(**inputs), inputs, adapter.summary)
    return distillation_losses(s, t, LossConfig())["total"].item()


@pytest.mark.multiprocess
def test_ddp_run_lowers_loss_and_saves_checkpoint_loadable_both_ways(ddp_run):
    root, teacher, student, _ = ddp_run
    output = root / "full"
    distilled = AutoModel.from_pretrained(output)
    assert type(distilled).__name__ == "AmpViTModel"
    recipe = distilled.config.amp_pruning["distillation"]
    assert recipe["processes"] == 2 and recipe["global_batch_size"] == 16 and recipe["steps"] == 8
    assert distilled.config.amp_pruning["method"] == "random"  # the pruning provenance is kept
    assert PrunePlan.load(output).widths == get_adapter(distilled).widths(distilled)

    teacher_model = AutoModel.from_pretrained(teacher)
    heldout = save_digits(root / "heldout", start=1000, count=32)
    before = _fixed_batch_loss(teacher_model, amp_hf.load_pruned(student), heldout)
    after = _fixed_batch_loss(teacher_model, distilled, heldout)
    assert after < 0.8 * before, (before, after)
    metrics = [json.loads(line) for line in (Path(f"{output}.run") / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 9))

    # Without amp_hf importable: the saved modeling files load it (trust_remote_code) to the same outputs.
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, root / "pixels.pt")
    code = (
        "import sys; sys.modules['amp_hf'] = None\n"
        "import torch; from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True).eval()\n"
        "with torch.no_grad():\n"
        f"    out = m(pixel_values=torch.load({str(root / 'pixels.pt')!r})).last_hidden_state\n"
        f"torch.save(out, {str(root / 'remote.pt')!r}); print(type(m).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "AmpViTModel"
    with torch.no_grad():
        expected = distilled.eval()(pixel_values=pixels).last_hidden_state
    # The subprocess runs on one thread (_env), so GEMMs may sum in another order: same outputs, not same bits.
    torch.testing.assert_close(torch.load(root / "remote.pt"), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.multiprocess
def test_stopped_and_resumed_run_reproduces_the_uninterrupted_weights(ddp_run):
    root, _, _, args = ddp_run
    output = root / "resumed"
    accelerate_distill(*args, f"output={output}", "schedule.stop_after=5")
    assert not output.exists()
    run_dir = Path(f"{output}.run")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000003", "step_00000005"]
    # What a crash after step 5 leaves behind: a half-written checkpoint and log lines past the last checkpoint.
    (run_dir / "checkpoints" / ".step_00000006.partial").mkdir()
    with (run_dir / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({"step": 6, "loss/total": 123.0}) + "\n")
    accelerate_distill(*args, f"output={output}", "--resume")

    full, resumed = load_file(root / "full" / "model.safetensors"), load_file(output / "model.safetensors")
    assert full.keys() == resumed.keys()
    # exact: both runs on this machine with the same threads (OMP_NUM_THREADS=1), seeds, batches and steps
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert _logged_losses(root / "full") == _logged_losses(output)  # the log describes the same run


def _logged_losses(output: Path) -> list[dict]:
    """metrics.jsonl of a run without its timing column."""
    rows = [json.loads(line) for line in (Path(f"{output}.run") / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key != "samples_per_second"} for row in rows]


def test_progress_bar_loss_moves_every_step_between_log_lines(tmp_path):
    """With one log line at the end, the bar still shows a new running-mean loss after each step (issue 29)."""
    teacher, student = save_pair(tmp_path, "vit")
    data = save_digits(tmp_path / "digits", start=0, count=32)
    command = [sys.executable, "-m", "amp_hf", "distill", f"teacher={teacher}", f"student={student}",
               f"data.source={data}", f"output={tmp_path / 'out'}", "data.batch_size=8", "schedule.max_steps=4",
               "schedule.warmup_steps=1", "optim.base_lr=0.002", "logging.every_steps=100"]
    # TQDM_MININTERVAL=0: draw every update (tqdm otherwise skips redraws within 0.1 s, and tiny steps are faster)
    env = {**_env(), "TQDM_MININTERVAL": "0"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    shown = re.findall(r"(\d+)/4 \[[^\]]*loss=([-\d.e+]+)\]", result.stderr)
    steps_with_loss = {int(step) for step, _ in shown}
    # The one log line comes at step 4; each draw shows the running mean set after the step before it.
    assert {2, 3} <= steps_with_loss, result.stderr[-2000:]
