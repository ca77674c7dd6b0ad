"""Load the teacher and the pruned student, check they belong together, and decide what trains.

Every check here runs before any training so a wrong pair fails in seconds with a message naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..checkpoint import CheckpointError, is_pruned_checkpoint, load_plan
from ..data import DataError, default_image_processor, load_processor
from ..families import FamilyAdapter, folder_family, get_adapter
from ..files.reading import read_config
from ..loading import load_model, resolve_model_path
from ..plan import PrunePlan
from ..slicing import hidden_tensor_names
from .features import FeatureModel


class IncompatiblePairError(CheckpointError):
    """The teacher and the student cannot be distilled together."""


@dataclass
class DistillPair:
    teacher: PreTrainedModel
    student: PreTrainedModel
    adapter: FamilyAdapter
    plan: PrunePlan | None  # the student's kept-neuron plan, carried over to the output
    processor: Any  # image processor or tokenizer, saved with the output


def load_student(reference: str) -> PreTrainedModel:
    """The pruned student (a folder or a Hub id of a pruned checkpoint)."""
    path = resolve_model_path(reference)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"student checkpoint {reference} does not exist (expected a pruned checkpoint folder)")
    if folder_family(path) is not None or not is_pruned_checkpoint(path):
        raise IncompatiblePairError(
            f"student {reference} is not a pruned checkpoint (model_type {_model_type(path)!r}, not "
            "amp_*): prune it first with `amp-hf prune`, or check that teacher and student are not swapped"
        )
    return load_model(path)


def _model_type(path: str) -> str | None:
    return read_config(path).get("model_type") if (Path(path) / "config.json").is_file() else None


def load_teacher(name_or_path: str) -> PreTrainedModel:
    """The unpruned teacher (a folder, a Hub id — downloaded once — or the embedded alias ``minilm``)."""
    path = resolve_model_path(name_or_path)
    if Path(path).is_dir() and folder_family(path) is None and is_pruned_checkpoint(path):
        raise IncompatiblePairError(
            f"teacher {name_or_path} is itself a pruned checkpoint ({read_config(path)['model_type']}): point "
            "teacher at the unpruned model the student was pruned from"
        )
    return load_model(path)


def check_compatible(teacher: nn.Module, student: nn.Module) -> FamilyAdapter:
    """Raise ``IncompatiblePairError`` unless ``student`` is a pruned copy of ``teacher``'s architecture."""
    adapter = get_adapter(student)
    teacher_adapter = get_adapter(teacher)
    if teacher_adapter.name != adapter.name:
        raise IncompatiblePairError(
            f"teacher is a {teacher_adapter.name} model ({type(teacher).__name__}) but the student is a "
            f"{adapter.name} model ({type(student).__name__}): use the teacher the student was pruned from"
        )
    if adapter.amp_class(teacher) is not type(student):
        stock = next(cls for cls in type(student).__mro__ if cls in adapter.model_classes and cls is not type(student))
        raise IncompatiblePairError(
            f"the teacher is a {type(teacher).__name__} but the student {type(student).__name__} was pruned from "
            f"a {stock.__name__}: use the checkpoint the student was pruned from"
        )
    teacher_config, student_config = adapter.backbone(teacher).config, adapter.backbone(student).config
    if teacher_config.hidden_size != student_config.hidden_size:
        raise IncompatiblePairError(
            f"hidden size differs: teacher {teacher_config.hidden_size}, student {student_config.hidden_size}: "
            "the student must be pruned from this teacher (only MLP widths may differ)"
        )
    teacher_widths, student_widths = adapter.widths(teacher), adapter.widths(student)
    if len(teacher_widths) != len(student_widths):
        raise IncompatiblePairError(
            f"layer count differs: teacher {len(teacher_widths)}, student {len(student_widths)}: "
            "the student must be pruned from this teacher"
        )
    original = (student.config.amp_pruning or {}).get("original_widths")
    if original is not None and list(original) != teacher_widths:
        raise IncompatiblePairError(
            f"the student was pruned from a model with MLP widths {list(original)}, the teacher has "
            f"{teacher_widths}: use the teacher the student was pruned from"
        )
    _check_other_tensors(teacher, student)
    return adapter


def _check_other_tensors(teacher: nn.Module, student: nn.Module) -> None:
    """Every tensor outside the MLPs must exist in both with the same shape (patch size, vocab, heads …)."""
    mlp_names = {name for names in hidden_tensor_names(student) for name, _, _ in names}
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, tensor in student_state.items():
        if name in mlp_names:
            continue
        if name not in teacher_state:
            raise IncompatiblePairError(f"teacher has no tensor {name!r}: the student was pruned from another model")
        if teacher_state[name].shape != tensor.shape:
            raise IncompatiblePairError(
                f"{name} has shape {tuple(tensor.shape)} in the student but {tuple(teacher_state[name].shape)} in "
                "the teacher: the student was pruned from another model"
            )


def load_pair_processor(config_student: str, config_teacher: str, teacher: nn.Module, adapter: FamilyAdapter):
    """The student's processor, else the teacher's, else (images only) a default built from the config."""
    for source in (resolve_model_path(config_student), resolve_model_path(config_teacher)):
        try:
            return load_processor(source, adapter)
        except DataError:
            continue
    if adapter.modality == "text":
        raise DataError(
            f"no tokenizer in {config_student} or {config_teacher}: save the tokenizer with the checkpoint "
            "(amp_hf.save_pruned(..., processor=tokenizer))"
        )
    return default_image_processor(adapter.backbone(teacher).config)


def load_pair(teacher_path: str, student_path: str) -> DistillPair:
    student = load_student(student_path)
    teacher = load_teacher(teacher_path)
    adapter = check_compatible(teacher, student)
    plan = load_plan(resolve_model_path(student_path), student)  # checked against the student's widths: a stale plan is never copied
    processor = load_pair_processor(student_path, teacher_path, teacher, adapter)
    return DistillPair(teacher=teacher, student=student, adapter=adapter, plan=plan, processor=processor)


def has_classifier(model: nn.Module) -> bool:
    return get_adapter(model).has_classifier_head(model)


def reached_parameters(feature_model: FeatureModel, inputs: dict) -> set[str]:
    """Names of the parameters the features (and logits, if the model returns them) depend on.

    Found with autograd on one dummy batch, so it holds for every family without naming modules: the
    embeddings and blocks are reached, the final norm / pooler / projection / text tower are not.
    """
    named = [(name, p) for name, p in feature_model.model.named_parameters() if p.requires_grad]
    outputs = feature_model(**inputs)
    target = sum(value.float().sum() for value in outputs.values())
    grads = torch.autograd.grad(target, [p for _, p in named], allow_unused=True)
    return {name for (name, _), grad in zip(named, grads) if grad is not None}


def select_trainable(pair: DistillPair, freeze_head: bool, train_logits: bool) -> list[str]:
    """Freeze every student parameter the losses cannot reach; with ``freeze_head`` they also take the
    teacher's values (AMP keeps the final norm and projection at the original weights). Returns the
    frozen names."""
    probe = FeatureModel(pair.student, pair.adapter, with_logits=train_logits)
    reached = reached_parameters(probe, pair.adapter.dummy_inputs(pair.student))
    teacher_state = pair.teacher.state_dict()
    frozen = []
    with torch.no_grad():
        for name, parameter in pair.student.named_parameters():
            if name in reached:
                continue
            if freeze_head:
                parameter.copy_(teacher_state[name])
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen
