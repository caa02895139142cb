"""``export_onnx(DIR, FILE)``: a model folder, an ensemble too, as one ONNX graph with its preprocessing in the metadata.

The networks are the ones ``load_model`` builds (every member of an ensemble folder); the graph is
their mean softmax over ``pixel_values`` (``handback.onnx_file``: input, output, metadata). It is
written with torch's own exporter, ``torch.onnx.export(dynamo=True)`` (``torch.export`` then
onnxscript's translation): the exporter torch 2.9+ maintains; the TorchScript one it replaced
warns that it will be removed. Before the file is written, onnxruntime runs the graph on a batch
and it must agree with the networks (``VERIFY_TOLERANCE``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autotransfer.core.errors import UserError
from autotransfer.handback.onnx_file import INPUT_NAME, OPSET, OUTPUT_NAME, onnx_metadata, require_onnx

__all__ = ["OnnxExportInfo", "export_onnx", "VERIFY_TOLERANCE"]

#: Largest ``|Δp|`` allowed between onnxruntime and torch on the check batch (float32 on the CPU
#: differ by about 1e-6).
VERIFY_TOLERANCE = 1e-4
#: A protobuf file holds at most 2 GiB: larger graphs would need external data files.
_MAX_BYTES = 2**31 - 2**26


@dataclass
class OnnxExportInfo:
    """What ``export_onnx`` wrote.

    Attributes:
        path: the ``.onnx`` file.
        members: networks averaged in the graph (1: a single network).
        bytes: the file's size.
        seconds: wall time of the export (loading, tracing, translating, checking, writing).
        opset: the ONNX opset of the graph.
        max_abs_diff: largest ``|Δp|`` between onnxruntime and torch on the check batch.
    """

    path: Path
    members: int
    bytes: int
    seconds: float
    opset: int
    max_abs_diff: float

    @property
    def kind(self) -> str:
        return f"ensemble of {self.members}" if self.members > 1 else "single network"


class MeanSoftmax(nn.Module):
    """``(B, 3, S, S)`` preprocessed images -> ``(B, K)`` mean softmax of ``members``."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        total = torch.softmax(self.members[0](pixel_values), dim=1)
        for member in self.members[1:]:
            total = total + torch.softmax(member(pixel_values), dim=1)
        return total / len(self.members)


def _check_output(output: str | Path) -> Path:
    path = Path(output).expanduser()
    if path.suffix.lower() != ".onnx":
        raise UserError(f"-o {str(output)!r}: the file name must end in .onnx (load_model and predict tell it by that)")
    if path.is_dir():
        raise UserError(f"-o {str(output)!r} is a folder; give the path of the .onnx file to write")
    if not path.parent.is_dir():
        raise UserError(f"-o {str(output)!r}: the folder {str(path.parent)!r} does not exist; create it first")
    return path


def _verify(graph: MeanSoftmax, model_proto, size: int) -> float:
    """``max |Δp|`` of onnxruntime against ``graph`` on 3 seeded random images; beyond
    ``VERIFY_TOLERANCE`` the export is refused (an exporter bug must not reach a file)."""
    import onnxruntime as ort

    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = graph(x).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= VERIFY_TOLERANCE:
        raise UserError(
            f"the ONNX graph disagrees with the model by {diff:.2e} (more than {VERIFY_TOLERANCE:g}); nothing was"
            " written: this architecture does not export faithfully with this torch"
        )
    return diff


def export_onnx(directory: str | Path, output: str | Path) -> OnnxExportInfo:
    """Write the model folder ``directory`` as the ONNX file ``output`` (one graph, dynamic batch).

    An ensemble folder becomes one graph averaging its members' softmax. The file is written to a
    temporary sibling and renamed into place, so ``output`` is whole or absent. A bad path (a
    missing or non-model ``directory``, ``output`` not ending in ``.onnx`` or in a missing folder)
    and a missing ``[onnx]`` extra are one-line ``UserError``.
    """
    from autotransfer.core.diskspace import disk_full_cause, disk_full_error
    from autotransfer.core.version import __version__
    from autotransfer.handback.predict import load_model

    start = time.perf_counter()
    path = _check_output(output)
    require_onnx("onnx", "onnxscript", "onnxruntime")
    import onnx

    predictor = load_model(directory, device="cpu")
    graph = MeanSoftmax(list(predictor.members)).eval()
    size = predictor.preprocessing.input_size
    weights = sum(p.numel() * p.element_size() for p in graph.parameters())
    if weights > _MAX_BYTES:
        raise UserError(f"{str(directory)!r} holds {weights / 2**30:.1f} GiB of weights: more than one ONNX file holds")
    example = torch.zeros(2, 3, size, size)  # batch 2: torch.export specialises a batch of 1
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                graph,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # torch.export / onnxscript raise many classes for a network they cannot trace
        raise UserError(
            f"cannot export {str(directory)!r} to ONNX ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    assert program is not None
    model = program.model_proto
    model.producer_name, model.producer_version = "autotransfer", __version__
    model.doc_string = (
        f"{predictor.config.get('architecture', '')}: {INPUT_NAME} (batch, 3, {size}, {size}) float32 preprocessed"
        f" as metadata 'autotransfer.preprocessing' says -> {OUTPUT_NAME} (batch, {len(predictor.classes_)}) softmax"
    )
    del model.metadata_props[:]
    for key, value in onnx_metadata(predictor.config, len(graph.members), __version__).items():
        model.metadata_props.add(key=key, value=value)
    diff = _verify(graph, model, size)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        if disk_full_cause(err) is not None:
            raise disk_full_error(err, path, weights) from None
        raise
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return OnnxExportInfo(path, len(graph.members), path.stat().st_size, time.perf_counter() - start, opset, diff)
