"""Reading user-supplied reference weights safely and mapping them strictly onto the project's modules.

- :func:`read_checkpoint` reads a torch checkpoint with ``torch.load(weights_only=True)``. Lightning
  checkpoints pickle their hyper-parameters; the only non-tensor class admitted is yacs' ``CfgNode``
  (HaMeR's config), read into ordered dicts through the stand-in :class:`YacsConfigNode`. Any other
  class is an error that names it: nothing is ever unpickled by importing arbitrary code.
- :func:`load_state_dict_strict` maps an official state dict onto a module through a :class:`KeyMap`
  (a prefix to strip, official keys ignored on purpose). Every other official key must land on a
  module key of the same shape and every module key must be filled; otherwise a
  :class:`CheckpointError` names the missing, unexpected and mis-shaped keys.
- :class:`OnnxModel` opens an exported network with onnxruntime, checks its input and output names,
  and runs it in batches (one sample at a time when the graph's batch size is fixed at 1).
  :class:`TorchModel` runs a loaded torch network behind the same call (numpy in, dict of numpy out),
  on the chosen device and precision.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

_LIST_AT_MOST = 10  # keys named per category in an error message


class CheckpointError(ValueError):
    """A weights file is unreadable, unsafe, or does not match the network; the message names the file
    and the keys or globals at fault."""


class YacsConfigNode:
    """Stand-in for ``yacs.config.CfgNode`` while reading a checkpoint (yacs is not needed): each node
    is read into a ``collections.OrderedDict`` of its entries (yacs' own flags land in its ``__dict__``).
    torch's weights-only unpickler fills only exact dict types, hence the factory."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


CHECKPOINT_GLOBALS: dict[str, type] = {"yacs.config.CfgNode": YacsConfigNode}
"""The classes a checkpoint may reference beyond torch's own weights-only set, by their pickled path,
with the stand-in each is read into."""


def read_checkpoint(path: Path | str, allowed_globals: Mapping[str, type] = CHECKPOINT_GLOBALS) -> Any:
    """Load a torch checkpoint on the CPU with ``weights_only=True``, admitting exactly ``allowed_globals``
    (pickled path -> stand-in class) beyond torch's defaults. Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([(cls, name) for name, cls in allowed_globals.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"WeightsUnpickler error: (.+?)(?: Please use|$)", str(e), flags=re.M)
        reason = found.group(1).strip() if found else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle it ({reason}). pearl reads checkpoints with torch.load(weights_only=True) "
            f"and admits only {sorted(allowed_globals)} beyond tensors; convert the file to a plain state dict "
            "(torch.save(ckpt['state_dict'], ...)) or report the class it needs"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def checkpoint_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint: a Lightning checkpoint's ``state_dict``, or ``obj``
    itself when it is already a flat ``name -> tensor`` mapping."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{source}: expected a state dict (name -> tensor) or a Lightning checkpoint with one")
    return {str(k): v for k, v in obj.items()}


@dataclass(frozen=True)
class KeyMap:
    """How an official state dict maps onto one of the project's modules."""

    prefix: str = ""
    """Prefix every used official key starts with; it is stripped (``"smirk_encoder."``)."""
    ignored: tuple[str, ...] = ()
    """Official keys left out on purpose: an entry ending in ``"."`` drops every key under that prefix
    (``"mano."``), any other entry drops exactly that key."""

    def is_ignored(self, key: str) -> bool:
        return any(key.startswith(e) if e.endswith(".") else key == e for e in self.ignored)


def _named(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_AT_MOST]) + (f", ... ({len(keys)} in all)" if len(keys) > _LIST_AT_MOST else "")
    return f"{title}: {shown}"


def map_state_dict(
    official: Mapping[str, Tensor], module: nn.Module, keymap: KeyMap, source: str
) -> tuple[dict[str, Tensor], list[str]]:
    """``(mapped state dict, ignored official keys)``; raises :class:`CheckpointError` naming every
    category of mismatch (missing, unexpected, wrong shape) when the mapping is not exact."""
    expected = module.state_dict()
    mapped: dict[str, Tensor] = {}
    ignored, unexpected, wrong_shape = [], [], []
    for key, value in official.items():
        if keymap.is_ignored(key):
            ignored.append(key)
        elif not key.startswith(keymap.prefix) or key[len(keymap.prefix):] not in expected:
            unexpected.append(key)
        else:
            name = key[len(keymap.prefix):]
            if tuple(value.shape) != tuple(expected[name].shape):
                wrong_shape.append(f"{key} {list(value.shape)} (network: {list(expected[name].shape)})")
            mapped[name] = value
    missing = [keymap.prefix + k for k in expected if k not in mapped]
    problems = [
        _named(title, keys)
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source}: does not match {type(module).__name__} — " + "; ".join(problems))
    return mapped, ignored


def load_state_dict_strict(module: nn.Module, official: Mapping[str, Tensor], keymap: KeyMap, source: str) -> list[str]:
    """Fill ``module`` from ``official`` through ``keymap`` (see :func:`map_state_dict`); returns the
    official keys ignored on purpose."""
    mapped, ignored = map_state_dict(official, module, keymap, source)
    module.load_state_dict(mapped, strict=True)
    log.debug("%s: loaded %d tensors into %s, ignored %d", source, len(mapped), type(module).__name__, len(ignored))
    return ignored


# --------------------------------------------------------------------------------------------------
# ONNX exports
# --------------------------------------------------------------------------------------------------


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise CheckpointError("device 'cuda' asked for, but onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported network with one image-like input ``[B, C, H, W]`` and named outputs.

    Args:
        path: the ``.onnx`` file.
        outputs: output names the caller needs (all must exist); every output is returned.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when onnxruntime has it).
        threads: intra-op threads on the CPU (0: onnxruntime's default).
    """

    def __init__(self, path: Path | str, outputs: Sequence[str], device: str = "auto", threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError("onnxruntime is not installed: pip install 'pearl[onnx]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        providers = onnx_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise CheckpointError(f"{self.path}: onnxruntime cannot open it ({type(e).__name__}: {e})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            got = [(i.name, i.shape) for i in inputs]
            raise CheckpointError(f"{self.path}: expected one input [B, C, H, W], got {got}")
        self.input_name = inputs[0].name
        self.input_shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
        self.output_names = [o.name for o in self.session.get_outputs()]
        missing = [n for n in outputs if n not in self.output_names]
        if missing:
            raise CheckpointError(f"{self.path}: missing outputs {missing}; it has {self.output_names}")

    @property
    def spatial_size(self) -> tuple[int, int] | None:
        """Fixed input (H, W), or None when the graph takes any size."""
        h, w = self.input_shape[2:]
        return (h, w) if h is not None and w is not None else None

    def __call__(self, inputs: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """inputs  # [B, C, H, W] float32 -> every output, concatenated over chunks along axis 0."""
        if len(inputs) == 0:
            raise ValueError(f"{self.path}: called with no inputs")
        fixed = self.input_shape[0]
        step = fixed if fixed is not None else max(1, batch_size)
        if fixed is not None and len(inputs) % fixed:
            raise ValueError(f"{self.path}: the graph takes batches of exactly {fixed}, got {len(inputs)} inputs")
        chunks = [
            self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, np.float32)})
            for x in (inputs[i : i + step] for i in range(0, len(inputs), step))
        ]
        return {name: np.concatenate([c[j] for c in chunks]) for j, name in enumerate(self.output_names)}


# --------------------------------------------------------------------------------------------------
# Torch networks behind the same call
# --------------------------------------------------------------------------------------------------

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(device)


class TorchModel:
    """A torch network returning a dict of tensors, called like :class:`OnnxModel`.

    Args:
        network: the module (moved to ``device``, put in eval mode).
        device: see :func:`torch_device`.
        precision: ``"auto"`` (bfloat16 autocast on CUDA, float32 on the CPU) or a key of
            :data:`PRECISIONS` (autocast dtype; ``float32`` runs without autocast).
    """

    def __init__(self, network: nn.Module, device: str = "auto", precision: str = "auto"):
        self.device = torch_device(device)
        if precision == "auto":
            precision = "bfloat16" if self.device.type == "cuda" else "float32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto' or one of {sorted(PRECISIONS)}, got {precision!r}")
        self.dtype = PRECISIONS[precision]
        self.network = network.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, inputs: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """inputs  # [B, ...] float32 -> every output as float32 numpy, concatenated along axis 0."""
        if len(inputs) == 0:
            raise ValueError(f"{type(self.network).__name__}: called with no inputs")
        chunks: list[dict[str, Tensor]] = []
        step = max(1, batch_size)
        for i in range(0, len(inputs), step):
            x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + step], np.float32)).to(self.device)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                out = self.network(x)
            chunks.append({k: v.float().cpu() for k, v in out.items()})
        return {k: torch.cat([c[k] for c in chunks]).numpy() for k in chunks[0]}
