"""ONNX Runtime inference on an exported folder: provider choice (TensorRT -> CUDA -> CPU), IOBinding on GPU,
and ``embed`` / ``zero_shot`` helpers that preprocess with the model's own processor files.

Works with either ``onnxruntime`` or ``onnxruntime-gpu`` installed; the providers that actually run each graph
are logged and exposed as ``runner.providers``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from amp_hf.files.artifacts import EXPORT_METADATA_FILE as METADATA_FILE

from .errors import ExportOptionError
from .specs import Embedding

logger = logging.getLogger(__name__)

PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TENSORRT_OPTIONS_FILE = "ort_tensorrt_options.json"


def select_providers(requested: Sequence[str] | None = None) -> list[str]:
    """``requested`` if this ONNX Runtime build has them all, else the best available in preference order."""
    available = ort.get_available_providers()
    if requested:
        missing = [name for name in requested if name not in available]
        if missing:
            raise ExportOptionError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build (available: "
                f"{', '.join(available)}); for CUDA / TensorRT install onnxruntime-gpu instead of onnxruntime"
            )
        return list(requested)
    return [name for name in PROVIDER_PREFERENCE if name in available]


# ONNX Runtime's CPU SkipLayerNormalization kernel (its residual-add + LayerNorm fusion) runs ~5x slower than the
# Add and LayerNormalization it replaces (12 norms of [8, 128, 384], 2 threads: 11.4 ms fused vs 2.3 ms unfused,
# onnxruntime 1.32): CPU sessions skip that fusion (all-MiniLM-L6-v2 batch 8: fp32 -9%, int8 -12 to -17% latency;
# docs/bench_deploy.md). GPU providers keep it: there the fused kernel is the fast one.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def disabled_optimizers(providers: Sequence[str]) -> list[str]:
    """Graph optimizers a session over ``providers`` should not run (``InferenceSession(disabled_optimizers=)``)."""
    first = providers[0] if providers else "CPUExecutionProvider"
    return list(CPU_DISABLED_OPTIMIZERS) if first == "CPUExecutionProvider" else []


def session_options(threads: int | None = None, spinning: bool = True) -> ort.SessionOptions:
    """All graph optimisations; ``threads`` intra-op threads. ``spinning=False`` lets idle worker threads sleep at
    once instead of busy-waiting for the next run: slower for one session run back to back, but fair when several
    sessions (or PyTorch) take turns on the same cores, as in the benchmarks."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(
    path: str | os.PathLike,
    providers: Sequence[str],
    provider_options: dict[str, dict] | None = None,
    threads: int | None = None,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An inference session over ``providers`` (each with its options from ``provider_options``, if any)."""
    provider_options = provider_options or {}
    entries = [(name, provider_options[name]) if name in provider_options else name for name in providers]
    return ort.InferenceSession(str(path), session_options(threads, spinning), providers=entries,
                                disabled_optimizers=disabled_optimizers(providers))


class ExportRunner:
    """Runs the graphs of an ``amp-hf export`` folder.

    >>> runner = ExportRunner("exported/")          # TensorRT -> CUDA -> CPU, whichever is installed
    >>> runner.providers                            # {"model": ["CPUExecutionProvider"]}
    >>> embeddings = runner.embed(images=[pil_image])
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        providers: Sequence[str] | None = None,
        io_binding: bool | None = None,
        threads: int | None = None,
    ):
        self.folder = Path(folder)
        metadata_path = self.folder / METADATA_FILE
        if not metadata_path.is_file():
            raise FileNotFoundError(
                f"{self.folder} is not an amp-hf export ({METADATA_FILE} missing): run `amp-hf export`"
            )
        self.metadata = json.loads(metadata_path.read_text())
        chosen = select_providers(providers)
        self.sessions = {
            name: create_session(
                self.folder / graph["file"],
                chosen,
                self._provider_options(name),
                threads,
            )
            for name, graph in self.metadata["graphs"].items()
        }
        self.providers = {name: session.get_providers() for name, session in self.sessions.items()}
        on_gpu = any(session.get_providers()[0] in GPU_PROVIDERS for session in self.sessions.values())
        self.io_binding = on_gpu if io_binding is None else io_binding
        self._device = "cuda" if on_gpu else "cpu"
        for name, active in self.providers.items():
            logger.info("%s runs on %s", self.metadata["graphs"][name]["file"], active[0])
        self._image_processor = self._tokenizer = None

    def _provider_options(self, graph: str) -> dict[str, dict]:
        options: dict[str, dict] = {"CUDAExecutionProvider": {"device_id": 0}}
        cache = str(self.folder / "trt_engine_cache")
        tensorrt = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
        }
        profile_file = self.folder / TENSORRT_OPTIONS_FILE
        if profile_file.is_file():  # a --target tensorrt export: its batch profile and precision
            profile = json.loads(profile_file.read_text())[graph]
            tensorrt.update({key: value for key, value in profile.items() if not key.endswith("_cache_path")})
        options["TensorrtExecutionProvider"] = tensorrt
        return options

    # -- raw graphs ------------------------------------------------------------------------------------

    def graph_for(self, modality: str) -> str:
        for name, graph in self.metadata["graphs"].items():
            if graph["modality"] == modality:
                return name
        raise ExportOptionError(f"this export has no {modality} graph (graphs: {', '.join(self.metadata['graphs'])})")

    def run(self, graph: str | None = None, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run one graph (the only one if ``graph`` is None) on named numpy inputs; returns named outputs."""
        name = graph or next(iter(self.sessions))
        session = self.sessions[name]
        feeds = {value.name: np.ascontiguousarray(inputs[value.name]) for value in session.get_inputs()}
        names = [output.name for output in session.get_outputs()]
        if not self.io_binding:
            return dict(zip(names, session.run(names, feeds)))
        # IOBinding: inputs copied to the device once, outputs allocated there by ONNX Runtime.
        binding = session.io_binding()
        for input_name, array in feeds.items():
            binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(array, self._device, 0))
        for output_name in names:
            binding.bind_output(output_name, self._device, 0)
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    # -- preprocessing -----------------------------------------------------------------------------------

    def preprocess_images(self, images) -> np.ndarray:
        """``pixel_values`` for PIL images / HWC arrays, with the model's own image processor."""
        if self._image_processor is None:
            from transformers import AutoImageProcessor

            self._image_processor = AutoImageProcessor.from_pretrained(self.folder)
        pixel_values = self._image_processor(images=images, return_tensors="np")["pixel_values"]
        return pixel_values.astype(np.float32)

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token inputs of the text graph, padded the way the model expects (static length if the graph has one)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.folder)
            except (OSError, ValueError) as error:
                raise ExportOptionError(
                    f"{self.folder} has no tokenizer files: export a checkpoint saved with its tokenizer, or call "
                    "run() with input_ids"
                ) from error
        graph = self.metadata["graphs"][self.graph_for("text")]
        length = graph["inputs"]["input_ids"]["shape"][1]
        static = isinstance(length, int)
        tokens = self._tokenizer(
            list(texts),
            padding="max_length" if static or graph["text_padding"] == "max_length" else "longest",
            truncation=True,
            max_length=length if static else graph["max_sequence_length"],
            return_tensors="np",
        )
        return {name: tokens[name].astype(np.int64) for name in graph["inputs"]}

    # -- helpers -------------------------------------------------------------------------------------------

    def embed(self, images=None, texts: Sequence[str] | None = None) -> np.ndarray:
        """One embedding per image (or per text), read from the graph as the model defines it."""
        if (images is None) == (texts is None):
            raise ExportOptionError("embed() takes either images or texts")
        modality = "image" if images is not None else "text"
        name = self.graph_for(modality)
        inputs = {"pixel_values": self.preprocess_images(images)} if images is not None else self.tokenize(texts)
        return self.embed_inputs(name, inputs)

    def embed_inputs(self, graph: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The embedding of already-preprocessed ``inputs`` to ``graph``."""
        embedding = self.metadata["graphs"][graph]["embedding"]
        if embedding is None:
            raise ExportOptionError(
                f"{self.metadata['architecture']} exports a classification head only: read run()['logits'] instead"
            )
        return Embedding(**embedding).pool(self.run(graph, **inputs), inputs)

    def zero_shot(self, images, labels: Sequence[str], template: str = "a photo of a {}.") -> np.ndarray:
        """Per image, the probability of each label (CLIP: softmax over labels; SigLIP: independent sigmoids)."""
        head = self.metadata.get("zero_shot")
        if head is None:
            raise ExportOptionError(f"{self.metadata['architecture']} has no image-text head for zero-shot use")
        image_embeds = _l2_normalize(self.embed(images=images))
        text_embeds = _l2_normalize(self.embed(texts=[template.format(label) for label in labels]))
        logits = np.exp(head["logit_scale"]) * image_embeds @ text_embeds.T + (head["logit_bias"] or 0.0)
        if head["kind"] == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        logits = logits - logits.max(axis=1, keepdims=True)
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
