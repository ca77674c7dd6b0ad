"""Evaluation metrics on precomputed features: pure tensor functions, no models, no data loading.

Protocols follow the papers amp-hf reproduces (AMP, arXiv 2603.08100; DGMR, arXiv 2506.08591): DINOv2's kNN
(cosine similarity, temperature-weighted voting), clip_benchmark's zero-shot classification and
retrieval recall@k, plus two label-free fidelity measures of a pruned model against its teacher.
Similarity work is done in row chunks so a large memory bank never needs an N x M matrix at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

KNN_KS = (10, 20, 100, 200)
KNN_TEMPERATURE = 0.07
RETRIEVAL_KS = (1, 5, 10)
NEIGHBOURS = 10
_CHUNK = 1024  # query rows per similarity block


def effective_ks(ks: Sequence[int], population: int) -> list[int]:
    """``ks`` clipped to ``population`` (duplicates after clipping removed), ascending."""
    if population < 1:
        raise ValueError("need at least one candidate to rank")
    return sorted({min(int(k), population) for k in ks})


def knn_correct(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
) -> dict[int, torch.Tensor]:
    """Per query, whether weighted kNN classification gets its label right, per k (DINOv2 ``eval_knn``
    protocol; see ``knn_accuracy``)."""
    train = F.normalize(train_features.float(), dim=1)
    query = F.normalize(query_features.float(), dim=1)
    train_labels = train_labels.long()
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    ks = effective_ks(ks, len(train))
    correct: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(query), _CHUNK):
        similarity = query[start : start + _CHUNK] @ train.T
        top_similarity, top_index = similarity.topk(ks[-1], dim=1)
        neighbour_labels = train_labels[top_index]
        # Subtracting each row's maximum rescales its weights by a constant: the vote winner is unchanged.
        weights = torch.exp((top_similarity - top_similarity[:, :1]) / temperature)
        labels = query_labels[start : start + _CHUNK].long()
        for k in ks:
            votes = torch.zeros(len(labels), num_classes).scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            correct[k].append(votes.argmax(dim=1) == labels)
    return {k: torch.cat(values) for k, values in correct.items()}


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
) -> dict[int, float]:
    """Top-1 accuracy of weighted kNN classification, per k (DINOv2 ``eval_knn`` protocol).

    Features are L2-normalised; each query's k most cosine-similar training samples vote for their label
    with weight ``exp(similarity / temperature)``; the class with the largest total wins (ties: lowest
    class id). ``k`` larger than the training set is clipped to its size.
    """
    correct = knn_correct(train_features, train_labels, query_features, query_labels, ks, temperature)
    return {k: int(hits.sum()) / len(hits) for k, hits in correct.items()}


def mean_and_error(values: torch.Tensor, z: float = 1.96) -> tuple[float, float]:
    """The mean of per-sample ``values`` and the half-width of its normal-approximation interval (95% at the
    default ``z``). For a change measured on the same samples, pass the per-sample differences (paired)."""
    values = values.double().flatten()
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(z * values.std(unbiased=True) / len(values) ** 0.5)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1,)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest logits, per k (clipped to the class count)."""
    ks = effective_ks(ks, logits.shape[1])
    ranked = logits.float().topk(ks[-1], dim=1).indices
    hits = ranked == labels.long().unsqueeze(1)
    return {k: int(hits[:, :k].any(dim=1).sum()) / len(labels) for k in ks}


def zero_shot_logits(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each image to each class (``classifier``: unit columns, one per class)."""
    return F.normalize(image_features.float(), dim=1) @ classifier.float()


def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[str, dict[int, float]]:
    """Zero-shot retrieval recall@k in both directions (clip_benchmark definition).

    ``text_to_image[j]`` is the index of the image caption ``j`` describes (images may have several
    captions). ``text_to_image``: a caption counts as retrieved when its image is among its k nearest
    images. ``image_to_text``: an image counts when any of its captions is among its k nearest captions.
    """
    images = F.normalize(image_features.float(), dim=1)
    texts = F.normalize(text_features.float(), dim=1)
    text_to_image = text_to_image.long()
    image_ks = effective_ks(ks, len(images))
    text_ks = effective_ks(ks, len(texts))

    text_hits = dict.fromkeys(image_ks, 0)
    for start in range(0, len(texts), _CHUNK):
        nearest = (texts[start : start + _CHUNK] @ images.T).topk(image_ks[-1], dim=1).indices
        found = nearest == text_to_image[start : start + _CHUNK].unsqueeze(1)
        for k in image_ks:
            text_hits[k] += int(found[:, :k].any(dim=1).sum())

    image_hits = dict.fromkeys(text_ks, 0)
    for start in range(0, len(images), _CHUNK):
        block = images[start : start + _CHUNK]
        nearest = (block @ texts.T).topk(text_ks[-1], dim=1).indices
        owner = torch.arange(start, start + len(block)).unsqueeze(1)
        found = text_to_image[nearest] == owner
        for k in text_ks:
            image_hits[k] += int(found[:, :k].any(dim=1).sum())

    return {
        "image_to_text": {k: image_hits[k] / len(images) for k in text_ks},
        "text_to_image": {k: text_hits[k] / len(texts) for k in image_ks},
    }


def mean_cosine(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean over samples of the cosine between a sample's student and teacher embeddings."""
    return float(F.cosine_similarity(student.float(), teacher.float(), dim=1).mean())


def nearest_neighbours(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each sample's k most cosine-similar other samples (itself excluded), shape (N, k)."""
    features = F.normalize(features.float(), dim=1)
    rows = []
    for start in range(0, len(features), _CHUNK):
        similarity = features[start : start + _CHUNK] @ features.T
        own = torch.arange(start, start + len(similarity))
        similarity[torch.arange(len(similarity)), own] = float("-inf")
        rows.append(similarity.topk(k, dim=1).indices)
    return torch.cat(rows)


def neighbour_overlap(student: torch.Tensor, teacher: torch.Tensor, k: int = NEIGHBOURS) -> tuple[float, int]:
    """Mean fraction of each sample's k nearest neighbours (cosine) that student and teacher share.

    Returns ``(overlap, k_used)``; k is clipped to N - 1 (a sample is never its own neighbour).
    """
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} embeddings, teacher {len(teacher)}: embed the same samples")
    (k,) = effective_ks([k], len(student) - 1)
    student_neighbours = nearest_neighbours(student, k)
    teacher_neighbours = nearest_neighbours(teacher, k)
    shared = (student_neighbours.unsqueeze(2) == teacher_neighbours.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(shared.float().mean() / k), k
