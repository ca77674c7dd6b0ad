"""ONNX Runtime inference on an exported folder: provider choice (TensorRT -> CUDA -> CPU), IOBinding on GPU,
and ``embed`` / ``zero_shot`` helpers that preprocess with the model's own processor files.

Works with either ``onnxruntime`` or ``onnxruntime-gpu`` installed (never both: they share one folder). A
requested provider that does not load is an error naming the missing library; with ``"auto"`` the providers that
actually run each graph are logged and exposed as ``runner.providers``.
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
from .tensorrt import ENGINE_CACHE_DIR, TIMING_CACHE_DIR

logger = logging.getLogger(__name__)

PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TENSORRT_OPTIONS_FILE = "ort_tensorrt_options.json"
# Folders ONNX Runtime's TensorRT provider writes into an export folder: built for one GPU + TensorRT version,
# machine-specific, never pushed (hub_cards.push skips them).
TENSORRT_CACHE_FOLDERS = (ENGINE_CACHE_DIR, TIMING_CACHE_DIR)
AUTO = "auto"
PROVIDER_CHOICES = {  # what `--provider NAME` asks for, in the order ONNX Runtime tries them
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
GPU_INSTALL = ("install onnxruntime-gpu alone in place of onnxruntime: pip uninstall -y onnxruntime "
               "onnxruntime-gpu, then pip install --no-deps 'onnxruntime-gpu[cuda,cudnn]' as amp-hf[gpu] pins it "
               "(README: GPU deployment)")  # fmt: skip


class ProviderError(ExportOptionError):
    """A requested execution provider is not in this onnxruntime build or did not load (a user error: exit 2)."""


def provider_names(choice: str | Sequence[str] | None) -> list[str] | None:
    """Provider names for ``"cpu"`` / ``"cuda"`` / ``"tensorrt"`` or a list of names; None for ``"auto"`` / None
    (the best this machine loads)."""
    if choice is None or choice == AUTO:
        return None
    if isinstance(choice, str):
        if choice not in PROVIDER_CHOICES:
            raise ProviderError(f"unknown provider {choice!r}: choose {', '.join([*PROVIDER_CHOICES, AUTO])}")
        return list(PROVIDER_CHOICES[choice])
    return list(choice)


def onnxruntime_distributions() -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` module (more than one: a broken mix)."""
    from importlib import metadata

    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def build_cuda_version() -> str | None:
    """The CUDA version this onnxruntime build links (None for a CPU build)."""
    from onnxruntime.capi import build_and_package_info

    return getattr(build_and_package_info, "cuda_version", None) or None


def select_providers(requested: Sequence[str] | None = None) -> list[str]:
    """``requested`` if this ONNX Runtime build has them all, else the best available in preference order.
    Being in the build does not mean loading: ``create_session`` checks what the session actually runs on."""
    available = ort.get_available_providers()
    if requested:
        missing = [name for name in requested if name not in available]
        if missing:
            distributions = onnxruntime_distributions()
            raise ProviderError(
                f"{', '.join(missing)} not in this onnxruntime build ({' + '.join(distributions) or 'onnxruntime'} "
                f"{ort.__version__}, providers: {', '.join(available)}): {GPU_INSTALL}"
            )
        return list(requested)
    return [name for name in PROVIDER_PREFERENCE if name in available]


def load_provider_libraries(providers: Sequence[str]) -> None:
    """Load what the GPU providers dlopen before a session asks for them: ONNX Runtime's provider libraries carry no
    RUNPATH, so the CUDA runtime / cuBLAS / cuDNN of the ``nvidia-*`` wheels (``onnxruntime-gpu[cuda,cudnn]``) load
    only through ``onnxruntime.preload_dlls()``, and TensorRT's only through ``import tensorrt`` (which loads its
    ``tensorrt_libs``). A library that still cannot be found is named by ``check_providers``."""
    if not any(name in GPU_PROVIDERS for name in providers):
        return
    distributions = onnxruntime_distributions()
    if len(distributions) > 1:
        raise ProviderError(
            "onnxruntime and onnxruntime-gpu are both installed and share one onnxruntime/ folder (which build "
            f"runs is an accident of install order): {GPU_INSTALL}"
        )
    if build_cuda_version() and hasattr(ort, "preload_dlls"):
        _quietly(ort.preload_dlls)
    if "TensorrtExecutionProvider" in providers:
        try:
            import tensorrt  # noqa: F401  (loads libnvinfer / libnvonnxparser for the TensorRT provider)
        except ImportError:
            pass  # a system TensorRT on LD_LIBRARY_PATH still works; check_providers names what is missing


def _quietly(function) -> None:
    """``function()`` with its prints (preload_dlls reports to stdout) kept off the user's output."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        function()


# The libraries each provider library of onnxruntime-gpu 1.31 (CUDA 13 build) links (`objdump -p`), as
# (soname pattern with the CUDA major, what it is, where it comes from).
_CUDA_LIBRARIES = (
    ("libcuda.so.1", "the NVIDIA driver", "install the NVIDIA driver (CUDA {cuda} needs r{driver}+)"),
    ("libcudart.so.{cuda}", "the CUDA {cuda} runtime", "pip install 'amp-hf[gpu]' (nvidia-cuda-runtime)"),
    ("libcublas.so.{cuda}", "cuBLAS (CUDA {cuda})", "pip install 'amp-hf[gpu]' (nvidia-cublas)"),
    ("libcublasLt.so.{cuda}", "cuBLASLt (CUDA {cuda})", "pip install 'amp-hf[gpu]' (nvidia-cublas)"),
    ("libcurand.so.10", "cuRAND", "pip install 'amp-hf[gpu]' (nvidia-curand)"),
    ("libcudnn.so.9", "cuDNN 9", "pip install 'amp-hf[gpu]' (nvidia-cudnn-cu{cuda})"),
)
_TENSORRT_LIBRARIES = (
    ("libnvinfer.so.10", "TensorRT 10", "pip install 'amp-hf[tensorrt]' from NVIDIA's index (README: GPU deployment)"),
    ("libnvonnxparser.so.10", "TensorRT 10's ONNX parser",
     "pip install 'amp-hf[tensorrt]' from NVIDIA's index (README: GPU deployment)"),
)
_DRIVER_FOR_CUDA = {12: 525, 13: 580}  # minimum Linux driver branch of each CUDA major


def missing_library(provider: str, loadable=None) -> str:
    """Why ``provider`` did not load: the first library it links that cannot be loaded, with the fix.
    ``loadable(soname) -> bool`` defaults to trying ``ctypes.CDLL``."""
    loadable = loadable or _can_load
    cuda = (build_cuda_version() or "13").split(".")[0]
    values = {"cuda": cuda, "driver": _DRIVER_FOR_CUDA.get(int(cuda), "?")}
    libraries = _CUDA_LIBRARIES + (_TENSORRT_LIBRARIES if provider == "TensorrtExecutionProvider" else ())
    for pattern, what, fix in libraries:
        soname = pattern.format(**values)
        if not loadable(soname):
            return f"{what} ({soname}) cannot be loaded: {fix.format(**values)}"
    driver = driver_cuda_version()
    if driver is not None and driver[0] < int(cuda):
        return (f"the NVIDIA driver supports CUDA {driver[0]}.{driver[1]} only, this onnxruntime build needs CUDA "
                f"{cuda} (driver r{values['driver']}+): update the driver, or on a CUDA {driver[0]} machine use the "
                "README's CUDA 12 install")  # fmt: skip
    return "every library it links loads (see ONNX Runtime's log above for the cause)"


def _can_load(soname: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA version the installed NVIDIA driver supports (``cuDriverGetVersion``), None without one."""
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if driver.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def check_providers(
    session: ort.InferenceSession, requested: Sequence[str], path: str | os.PathLike | bytes = ""
) -> None:
    """Raise ``ProviderError`` when a requested provider is not one ``session`` runs on: ONNX Runtime only warns
    when a provider fails to load (or falls back after an error) and quietly runs on the next one."""
    active = session.get_providers()
    missing = [name for name in requested if name not in active]
    if not missing:
        return
    name = missing[0]
    reason = missing_library(name) if name in GPU_PROVIDERS else "see ONNX Runtime's log"
    where = "a probe graph" if isinstance(path, bytes) else Path(path).name or "the session"
    raise ProviderError(f"{name} did not load for {where} (running on "
                        f"{', '.join(active)} instead): {reason}")  # fmt: skip


# ONNX Runtime's CPU SkipLayerNormalization kernel (its residual-add + LayerNorm fusion) runs ~5x slower than the
# Add and LayerNormalization it replaces (12 norms of [8, 128, 384], 2 threads: 11.4 ms fused vs 2.3 ms unfused,
# onnxruntime 1.32): CPU sessions skip that fusion (all-MiniLM-L6-v2 batch 8: fp32 -9%, int8 -12 to -17% latency;
# docs/bench_deploy.md). GPU providers keep it: there the fused kernel is the fast one.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
# The session config entry that carries them: unlike InferenceSession(disabled_optimizers=), which ONNX Runtime
# drops when it re-creates a session after an execution-provider error, SessionOptions are kept.
DISABLE_OPTIMIZERS_ENTRY = "optimization.disable_specified_optimizers"


def disabled_optimizers(providers: Sequence[str]) -> list[str]:
    """Graph optimizers a session over ``providers`` should not run (``session_options(providers=...)`` sets them)."""
    first = providers[0] if providers else "CPUExecutionProvider"
    return list(CPU_DISABLED_OPTIMIZERS) if first == "CPUExecutionProvider" else []


def session_options(
    threads: int | None = None, spinning: bool = True, providers: Sequence[str] | None = None
) -> ort.SessionOptions:
    """All graph optimisations but ``disabled_optimizers(providers)`` (when ``providers`` is given); ``threads``
    intra-op threads. ``spinning=False`` lets idle worker threads sleep at once instead of busy-waiting for the next
    run: slower for one session run back to back, but fair when several sessions (or PyTorch) take turns on the
    same cores, as in the benchmarks."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    disabled = disabled_optimizers(providers) if providers is not None else []
    if disabled:
        options.add_session_config_entry(DISABLE_OPTIMIZERS_ENTRY, ",".join(disabled))
    return options


def create_session(
    path: str | os.PathLike | bytes,
    providers: Sequence[str] | str | None,
    provider_options: dict[str, dict] | None = None,
    threads: int | None = None,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An inference session over ``providers`` (names, or ``"cpu"`` / ``"cuda"`` / ``"tensorrt"``; ``"auto"`` or
    None: the best this build has), each with its options from ``provider_options``, if any. Requested providers
    must be the ones the session runs on (``ProviderError`` otherwise); with ``"auto"`` the active ones are
    ``session.get_providers()``."""
    requested = provider_names(providers)
    chosen = select_providers(requested)
    load_provider_libraries(chosen)
    provider_options = provider_options or {}
    entries = [(name, provider_options[name]) if name in provider_options else name for name in chosen]
    options = session_options(threads, spinning, chosen)
    session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=entries)
    if requested:
        check_providers(session, requested, path)
        # a run that fails on the GPU raises instead of quietly re-running on the CPU
        session.disable_fallback()
    elif chosen and session.get_providers()[0] != chosen[0]:
        logger.warning("%s: %s did not load (%s); running on %s",
                       "probe" if isinstance(path, bytes) else Path(path).name, chosen[0],
                       missing_library(chosen[0]), session.get_providers()[0])  # fmt: skip
    return session


def probe_graph() -> bytes:
    """A one-node float graph (``y = x + x``) to find out which providers load, before any real model."""
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", values[:1], values[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def check_loadable(choice: str | Sequence[str] | None) -> list[str]:
    """The providers a session of ``choice`` runs on (a probe graph's), ``ProviderError`` when a requested one does
    not load; for ``"auto"`` / None, whatever loads."""
    return create_session(probe_graph(), choice).get_providers()


def loadable_providers() -> dict[str, str | None]:
    """Per provider in this onnxruntime build (Azure aside): None when a session on it loads, else why not."""
    result = {}
    for name in [n for n in ort.get_available_providers() if n in PROVIDER_PREFERENCE]:
        try:
            check_loadable([name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"])
        except ProviderError as error:
            result[name] = str(error)
        else:
            result[name] = None
    return result


class ExportRunner:
    """Runs the graphs of an ``amp-hf export`` folder.

    >>> runner = ExportRunner("exported/")          # auto: TensorRT -> CUDA -> CPU, whichever loads
    >>> runner.providers                            # {"model": ["CPUExecutionProvider"]}: what actually runs
    >>> ExportRunner("exported/", providers="cuda")  # ProviderError unless the CUDA provider loads
    >>> embeddings = runner.embed(images=[pil_image])
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        providers: Sequence[str] | str | None = None,
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
        self.sessions = {
            name: create_session(
                self.folder / graph["file"],
                providers,
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
        engines, timing = (str(self.folder / name) for name in TENSORRT_CACHE_FOLDERS)
        tensorrt = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": engines,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": timing,
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
