"""What an export should produce, checked up front so a bad combination fails before any tracing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ExportOptionError

DTYPES = ("fp32", "fp16")
ORT_FUSIONS = ("cpu", "cuda")
QUANTIZATIONS = ("int8-dynamic", "int8-static")
DEFAULT_CALIBRATION_SAMPLES = 128
TARGETS = ("onnx", "tensorrt")
DEFAULT_OPSET = {
    "onnx": 18,
    "tensorrt": 17,
}  # 17: first opset with LayerNormalization, parsed by TensorRT >= 8.6
MIN_OPSET = 17  # LayerNormalization stays one op from here on


def max_opset() -> int:
    """The newest opset of the installed onnx package."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


@dataclass(frozen=True)
class ExportOptions:
    """Options of one export (see ``amp-hf export --help``).

    ``dtype="fp16"`` converts the graph to float16 with LayerNorm and Softmax kept in float32 and float32 inputs
    and outputs; under ``target="tensorrt"`` the graph stays float32 and fp16 is requested from the TensorRT
    builder instead (its own mixed precision is safer than a pre-cast graph). ``external_data=None`` moves
    the weights into ``<graph>.onnx.data`` only when they exceed ``EXTERNAL_DATA_BYTES``.
    ``sequence_length`` is the fixed text length of TensorRT-profile text graphs (default: the model's own
    maximum, 128 tokens for BERT-style encoders); ``tensorrt_batch`` is the (min, opt, max) batch profile.
    ``quantize="int8-static"`` calibrates activation ranges on ``calibration_samples`` examples of the data
    source ``calibration_data`` (any ``data.source``: ``fortunes``, ``fashion_mnist``, an image folder, ...)
    and reports the quantization error on held-out examples of the same source.
    """

    opset: int | None = None
    dtype: str = "fp32"
    ort_fusions: str | None = None
    quantize: str | None = None
    target: str = "onnx"
    external_data: bool | None = None
    sequence_length: int | None = None
    tensorrt_batch: tuple[int, int, int] = (1, 8, 32)
    calibration_data: str | None = None
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES

    def __post_init__(self):
        _choice("dtype", self.dtype, DTYPES)
        _choice("target", self.target, TARGETS)
        if self.ort_fusions is not None:
            _choice("ort_fusions", self.ort_fusions, ORT_FUSIONS)
        if self.quantize is not None:
            _choice("quantize", self.quantize, QUANTIZATIONS)
        if self.opset is not None and self.opset < MIN_OPSET:
            raise ExportOptionError(f"opset {self.opset} is too old: use {MIN_OPSET} or newer (LayerNormalization)")
        if self.opset is not None and self.opset > max_opset():
            raise ExportOptionError(
                f"opset {self.opset} does not exist yet: the installed onnx knows opsets up to {max_opset()} "
                f"(default {DEFAULT_OPSET['onnx']})"
            )
        if self.quantize and self.dtype == "fp16":
            raise ExportOptionError(f"--quantize {self.quantize} quantizes a float32 graph: drop --dtype fp16")
        if self.calibration_data is not None and self.quantize != "int8-static":
            raise ExportOptionError("--calibration-data calibrates --quantize int8-static: add it, or drop the data")
        if self.calibration_samples < 1:
            raise ExportOptionError(f"--calibration-samples must be positive; got {self.calibration_samples}")
        if self.target == "tensorrt":
            self._check_tensorrt()
        elif self.sequence_length is not None:
            raise ExportOptionError("--sequence-length fixes text length for --target tensorrt only")
        batch = tuple(self.tensorrt_batch)
        if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
            raise ExportOptionError(
                f"TensorRT batch profile must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX; got {batch}"
            )

    def _check_tensorrt(self) -> None:
        if self.ort_fusions:
            raise ExportOptionError(
                "--ort-fusions writes ONNX Runtime contrib ops TensorRT cannot parse: drop it for --target tensorrt "
                "(TensorRT fuses attention and normalisation itself)"
            )
        if self.quantize == "int8-dynamic":
            raise ExportOptionError(
                "--quantize int8-dynamic emits DynamicQuantizeLinear/MatMulInteger, which TensorRT rejects: "
                "drop it for --target tensorrt (use TensorRT's own int8 calibration instead)"
            )
        if self.quantize:
            raise ExportOptionError(
                "--quantize int8-static writes ONNX Runtime's uint8 QDQ layout; TensorRT's explicit quantization "
                "needs symmetric int8: drop it for --target tensorrt (use TensorRT's own int8 calibration instead)"
            )
        if self.sequence_length is not None and self.sequence_length < 1:
            raise ExportOptionError(f"--sequence-length must be positive; got {self.sequence_length}")

    @property
    def resolved_opset(self) -> int:
        return self.opset or DEFAULT_OPSET[self.target]

    @property
    def graph_dtype(self) -> str:
        """The float type stored in the graph (TensorRT profiles stay fp32; fp16 is a builder flag)."""
        return "fp32" if self.target == "tensorrt" else self.dtype

    @property
    def tolerance_key(self) -> str:
        return self.quantize or self.graph_dtype

    def to_dict(self) -> dict:
        values = asdict(self)
        values["tensorrt_batch"] = list(self.tensorrt_batch)
        values["opset"] = self.resolved_opset
        if self.calibration_data is not None:  # a source name, never a local path (the metadata may be pushed)
            values["calibration_data"] = Path(self.calibration_data).name
        else:
            del values["calibration_samples"]
        return values


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ExportOptionError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
