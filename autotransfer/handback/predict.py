"""``load_model(DIR)``: a fine-tuned model folder as a predictor with its own preprocessing.

The folder is the one ``tune`` and ``train --config`` write (``backbones.model_dir``): timm's
pretrained format, ``config.json`` + ``model.safetensors``. The predictor reads images (paths,
PIL images or arrays), applies the folder's preprocessing (shorter side resized bicubic to the
input size, centre crop, ``(x / 255 - mean) / std``: exactly the view the study scored the model
on) and returns class probabilities in the order of ``classes_`` (the folder's ``label_names``).
``load_model(FILE.onnx)`` gives the same predictor over the file ``export-model`` wrote, run by
onnxruntime (``OnnxPredictor``): the preprocessing is read from the file and applied by the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from autotransfer.core.errors import UserError

__all__ = ["Predictor", "OnnxPredictor", "FilePredictions", "load_model", "list_image_files"]

#: Images per forward pass (and per resize chunk): the batch the study validates and tests with
#: (``train.loop``), so that on CUDA, where bf16 results can depend on the batch, the study's test
#: split is scored in the very same batches.
BATCH_SIZE = 256
#: Images per forward pass on the CPU when streaming files (``predict_files``, ``predict_proba``):
#: a CPU holds the activations in host memory, which for lite0 at 224 px grow by about 14 MB per
#: image (3.6 GB at 256; measured, ``benchmarks/bench_predict_memory.py``). CPU float32 results
#: do not depend on the batch (checked: identical logits at 64 vs 4 x 16), so only the peak changes.
CPU_BATCH_SIZE = 32
#: Files ``predict_files`` decodes at a time (threads share them) before resizing them to the input size.
DECODE_CHUNK = 32
_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


@dataclass
class FilePredictions:
    """What ``Predictor.predict_files`` found.

    Attributes:
        paths: the files that were read, in the order given.
        proba: ``(len(paths), K)`` class probabilities, columns in the order of ``classes_``.
        skipped: ``(path, reason)`` of each file left out (``unreadable`` or ``missing``).
    """

    paths: list[str]
    proba: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def top(self, classes: Sequence[str] | np.ndarray, k: int) -> list[tuple[str, list[tuple[str, float]]]]:
        """Per file, its ``k`` most probable ``(class name, probability)``, most probable first (ties
        keep the class order); ``k`` is capped at the number of classes."""
        k = min(k, len(classes))
        order = np.argsort(-self.proba, axis=1, kind="stable")[:, :k]
        return [
            (path, [(str(classes[j]), float(self.proba[i, j])) for j in order[i]]) for i, path in enumerate(self.paths)
        ]


def _as_rgb(image: Any, where: str, max_side: int | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 from a path, a PIL image or an array (grey, RGB, RGBA; uint8 or float);
    a path is decoded with its shorter side at most ``max_side`` (``data.decode.decode_bytes``)."""
    from PIL import Image

    from autotransfer.data.decode import decode_bytes, to_rgb

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read image {str(path)!r}: {err.strerror or err}") from None
        try:
            return decode_bytes(data, max_side=max_side)
        except Exception:
            raise UserError(f"{str(path)!r} is not a readable image") from None
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        from autotransfer.data.decode import _scale_to_uint8

        array = image
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or array.size == 0:
            raise UserError(
                f"{where}: an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), but got shape {image.shape}"
            )
        if array.dtype == np.bool_ or not (
            np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        ):
            raise UserError(f"{where}: an image array must hold integers or floats, but got dtype {image.dtype}")
        array = _scale_to_uint8(array)
        if array.ndim == 2:
            return np.repeat(array[:, :, None], 3, axis=2)
        if array.shape[2] == 4:
            return to_rgb(Image.fromarray(np.ascontiguousarray(array), "RGBA"))
        return np.ascontiguousarray(array)
    raise UserError(f"{where}: expected a path, a PIL image or a numpy array, but got {type(image).__name__}")


def _image_list(images: Any) -> list[Any]:
    """One list of images from a single image, a batch array ``(N, H, W[, C])`` or a sequence."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        # (N, H, W, C) and (N, H, W) are batches; (H, W), (H, W, 1|3|4) one image
        batch = images.ndim == 4 or (images.ndim == 3 and images.shape[2] not in (1, 3, 4))
        return list(images) if batch else [images]
    if isinstance(images, Iterable):
        return list(images)
    raise UserError(f"expected images (paths, PIL images or arrays), but got {type(images).__name__}")


class Predictor:
    """A fine-tuned classifier with its preprocessing: ``predict``, ``predict_proba``, ``classes_``.

    Build one with :func:`load_model`. ``predict_proba`` returns ``(N, K)`` probabilities (softmax of
    the logits), columns in the order of ``classes_``; ``predict`` the most probable class names.
    Inputs are paths, PIL images or arrays (``(H, W)``, ``(H, W, 3)``, ``(H, W, 4)``, uint8 or float
    in 0..1 / 0..255), a list of them, or one ``(N, H, W, C)`` or ``(N, H, W)`` batch array (a 3-D
    array whose last axis is 1, 3 or 4 long is one image). An image that cannot be read is
    a ``UserError`` naming it (``predict_files`` skips and counts them instead).

    Attributes:
        classes_: ``(K,)`` class names; column ``i`` of ``predict_proba`` is ``classes_[i]``.
        preprocessing: mean, std, input size and interpolation (``backbones.Preprocessing``).
        config: the folder's ``config.json``.
        model: the ``torch.nn.Module``, in eval mode (an ensemble's first member).
        members: every network of the model, ``model`` first; ``predict_proba`` averages their
            softmax probabilities (one network unless the folder is an ensemble).
    """

    def __init__(
        self,
        model,
        classes: Sequence[str],
        preprocessing,
        *,
        device: str = "auto",
        config: dict[str, Any] | None = None,
        directory: str | Path | None = None,
        members: Sequence[Any] = (),
    ) -> None:
        from autotransfer.train import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.members = [self.model] + [m.to(self.device).eval() for m in members]
        self.classes_ = np.asarray([str(c) for c in classes], dtype=object)
        self.preprocessing = preprocessing
        self.config = dict(config or {})
        self.directory = None if directory is None else Path(directory)

    def __repr__(self) -> str:
        pre = self.preprocessing
        ensemble = f", ensemble of {len(self.members)}" if len(self.members) > 1 else ""
        return (
            f"Predictor({self.config.get('architecture', type(self.model).__name__)!r}, "
            f"{len(self.classes_)} classes, {pre.input_size}px{ensemble}, device={str(self.device)!r})"
        )

    @property
    def metric(self) -> str:
        """The metric the study scored the model with (``accuracy`` when the folder does not say)."""
        return str((self.config.get("autotransfer") or {}).get("metric") or "accuracy")

    @property
    def stream_batch(self) -> int:
        """Images per forward pass when reading files: ``BATCH_SIZE`` on a GPU (the study's own
        batches, as bf16 results can depend on them), ``CPU_BATCH_SIZE`` on the CPU."""
        return BATCH_SIZE if self.device.type != "cpu" else CPU_BATCH_SIZE

    @property
    def decode_side(self) -> int:
        """Image files are decoded with their shorter side at most this many pixels (the bounded
        decode ``tune`` and ``evaluate`` read folders with: ``data.folder.DECODE_SIDE``, or the
        input size when larger), so a large photo's full-size pixels never exist."""
        from autotransfer.data.folder import DECODE_SIDE

        return max(DECODE_SIDE, int(self.preprocessing.input_size))

    def predict_proba(self, images: Any, *, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``(N, K)`` float32 class probabilities of ``images``, read and scored ``BATCH_SIZE`` at a
        time (paths are decoded batch by batch, so memory does not grow with their number)."""
        from autotransfer.data.cache import resize_square

        items = _image_list(images)
        size, total, side, batch = self.preprocessing.input_size, len(items), self.decode_side, self.stream_batch
        out: list[np.ndarray] = []
        for start in range(0, total, batch):
            chunk = [
                resize_square(_as_rgb(image, f"image {start + i}", side), size)
                for i, image in enumerate(items[start : start + batch])
            ]
            out.append(self._proba_of_squares(np.stack(chunk)))
            if progress is not None:
                progress(min(start + batch, total), total)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)), np.float32)

    def predict(self, images: Any) -> np.ndarray:
        """``(N,)`` predicted class names (``classes_[argmax]``)."""
        return self.classes_[self.predict_proba(images).argmax(axis=1)]

    def predict_files(
        self, paths: Sequence[str | Path], *, progress: Callable[[int, int], None] | None = None
    ) -> FilePredictions:
        """Probabilities for the readable ``paths``; missing or undecodable files are skipped and listed.

        Streams: files are decoded ``DECODE_CHUNK`` at a time with the package's bounded decoder
        (``data.folder.decode_files``, shorter side at most ``decode_side``, nothing cached) and
        resized to the input size at once; each ``stream_batch`` readable images are scored, and
        ``progress(files done, total)`` called, before the next are read. Host memory holds one
        batch at the input size and one chunk of reduced images, whatever the number of files.
        """
        from autotransfer.data.cache import resize_square
        from autotransfer.data.folder import decode_files

        files = [Path(p) for p in paths]
        size, total, side, batch = self.preprocessing.input_size, len(files), self.decode_side, self.stream_batch
        kept: list[str] = []
        skipped: list[tuple[str, str]] = []
        out: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        for start in range(0, total, DECODE_CHUNK):
            group = files[start : start + DECODE_CHUNK]
            for path, array in zip(group, decode_files(group, cache=False, max_side=side)):
                if array is None:  # any unreadable or undecodable file is skipped and counted
                    skipped.append((str(path), "unreadable" if path.exists() else "missing"))
                    continue
                kept.append(str(path))
                pending.append(resize_square(array, size))
            done = min(start + DECODE_CHUNK, total)
            while len(pending) >= batch or (pending and done == total):
                # on a GPU, the same batches as scoring all readable images at once (bf16 can depend on them)
                out.append(self._proba_of_squares(np.stack(pending[:batch])))
                del pending[:batch]
                if progress is not None:
                    progress(done, total)
        if progress is not None and total:
            progress(total, total)
        proba = np.concatenate(out) if out else np.zeros((0, len(self.classes_)), np.float32)
        return FilePredictions(kept, proba, skipped)

    def proba_of_arrays(
        self, arrays: Sequence[np.ndarray], *, progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """``(N, K)`` probabilities of ``(H, W, 3)`` uint8 arrays, ``BATCH_SIZE`` at a time."""
        from autotransfer.data.cache import resize_square

        size = self.preprocessing.input_size
        out: list[np.ndarray] = []
        total = len(arrays)
        for start in range(0, total, BATCH_SIZE):
            chunk = np.stack([resize_square(a, size) for a in arrays[start : start + BATCH_SIZE]])
            out.append(self._proba_of_squares(chunk))
            if progress is not None:
                progress(min(start + BATCH_SIZE, total), total)
        if not out:
            return np.zeros((0, len(self.classes_)), np.float32)
        return np.concatenate(out)

    def _batches(self, chunk: np.ndarray):
        """``(n, size, size, 3)`` uint8 images as ``DeviceBatches`` on ``self.device``: their
        ``plain`` view is the one preprocessing path (``(x / 255 - mean) / std``, NCHW), for the
        networks here and for an ONNX graph (``OnnxPredictor``) alike."""
        from autotransfer.data.device import DeviceBatches

        pre = self.preprocessing
        return DeviceBatches(
            chunk,
            np.zeros(len(chunk), np.int64),
            device=self.device,
            out_size=pre.input_size,
            mean=pre.mean,
            std=pre.std,
            flip=False,
        )

    def _proba_of_squares(self, chunk: np.ndarray) -> np.ndarray:
        """``(n, K)`` probabilities of ``(n, size, size, 3)`` uint8 images, ``n <= BATCH_SIZE``."""
        from autotransfer.train.metrics import predict_proba

        # the study's evaluation view: DeviceBatches.plain (normalised), channels_last, and bf16
        # where the study's own evaluation uses it (native bf16 GPUs: train.default_amp)
        _, proba = predict_proba(self.members, self._batches(chunk), batch_size=BATCH_SIZE, channels_last=True)
        return proba.cpu().numpy().astype(np.float32)


class OnnxPredictor(Predictor):
    """A :class:`Predictor` whose network is an ONNX file ``export-model`` wrote, run by onnxruntime.

    Same interface and the same preprocessing (``Predictor._batches``), read from the file's
    metadata (``handback.onnx_file``); the graph's output already is the (mean) softmax. Build one
    with ``load_model("model.onnx")``.

    Attributes:
        session: the ``onnxruntime.InferenceSession``; ``model`` is the same object.
        members: ``[]``: the graph holds every member (``kind`` says how many: ``onnx_model``).
        onnx_model: the file's ``model`` metadata (``kind``, ``members``, ``architecture``).
    """

    def __init__(self, path: str | Path, *, device: str = "auto") -> None:
        import torch

        from autotransfer.backbones.model_dir import model_dir_preprocessing
        from autotransfer.handback.onnx_file import open_onnx

        self.session, meta = open_onnx(path, device=device, threads=torch.get_num_threads())
        self.device = torch.device("cpu")  # where the images are preprocessed; the session has its own
        self.model = self.session
        self.members = []
        self.classes_ = np.asarray(meta.classes, dtype=object)
        self.preprocessing = model_dir_preprocessing(meta.config)
        self.config = meta.config
        self.directory = Path(path)
        self.onnx_model = meta.model

    def __repr__(self) -> str:
        members = int(self.onnx_model.get("members") or 1)
        ensemble = f", ensemble of {members}" if members > 1 else ""
        return (
            f"OnnxPredictor({self.onnx_model.get('architecture', '')!r}, {len(self.classes_)} classes,"
            f" {self.preprocessing.input_size}px{ensemble}, {self.session.get_providers()[0]})"
        )

    def _proba_of_squares(self, chunk: np.ndarray) -> np.ndarray:
        from autotransfer.handback.onnx_file import INPUT_NAME, OUTPUT_NAME

        out = [
            self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
            for x, _ in self._batches(chunk).eval_batches(BATCH_SIZE)
        ]
        return np.concatenate(out).astype(np.float32)


def _check_outputs(model, weights: Path, input_size: int) -> None:
    """Refuse a network whose outputs on a plain image (the mean image) are not finite: its
    weights file is broken (NaN or infinite values that ``build_model``'s check let through,
    e.g. a negative BatchNorm variance)."""
    import torch

    with torch.no_grad():
        logits = model(torch.zeros(1, 3, input_size, input_size))
    if not bool(torch.isfinite(logits).all()):
        raise UserError(
            f"{str(weights)!r} is broken: the network it holds gives NaN or infinite outputs on a plain image;"
            " write the model again (autotransfer tune or train --config)"
        )


def load_model(directory: str | Path, *, device: str = "auto") -> Predictor:
    """The model folder ``directory`` (``config.json`` + ``model.safetensors``) as a :class:`Predictor`.

    ``device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda``. A folder that is missing, lacks
    a file or does not fit its architecture is a one-line ``UserError``, and so is a weights file
    whose tensors or outputs (on a plain image) are not finite: it names the broken file. An ensemble folder (pick
    rule ``ensemble``) loads every member (``backbones.model_dir.ensemble_member_dirs``). A path
    ending in ``.onnx`` is a file ``export-model`` wrote, run with onnxruntime (:class:`OnnxPredictor`,
    the ``[onnx]`` extra): same interface, same preprocessing (read from its metadata).
    """
    from autotransfer.backbones.model_dir import (
        WEIGHTS_NAME,
        build_model,
        ensemble_member_dirs,
        model_dir_preprocessing,
        read_model_config,
    )

    if Path(directory).suffix.lower() == ".onnx" and not Path(directory).expanduser().is_dir():
        return OnnxPredictor(directory, device=device)
    config = read_model_config(directory)
    first, *others = ensemble_member_dirs(directory, config)
    model = build_model(first, config)
    members = [build_model(path) for path in others]
    size = model_dir_preprocessing(config).input_size
    for path, network in zip([first, *others], [model, *members]):
        _check_outputs(network, Path(path) / WEIGHTS_NAME, size)
    return Predictor(
        model,
        config["label_names"],
        model_dir_preprocessing(config),
        device=device,
        config=config,
        directory=directory,
        members=members,
    )


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in _IGNORED_NAMES and path.name != "__MACOSX"


def list_image_files(
    sources: Sequence[str | Path], *, allow_outside: bool = False
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files ``predict`` reads from ``sources``: files as given, folders walked (sorted, hidden
    files left out), CSV manifests (a ``path`` column, relative to the manifest's folder).

    Returns ``(files, skipped)``: ``skipped`` holds ``(source, "missing")`` for sources not found.
    A CSV without a ``path`` column is a ``UserError``, and so is a row naming an absolute path or
    one that leads out of the manifest's folder (``..``, a link): the manifest rule of ``tune``,
    ``estimate`` and ``evaluate`` (``data.folder.manifest_path``), lifted by ``allow_outside``.
    """
    import csv

    from autotransfer.data.folder import manifest_path

    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            for root, dirs, names in os.walk(path, followlinks=False):
                dirs[:] = sorted(d for d in dirs if _visible(Path(d)))
                files.extend(Path(root) / n for n in sorted(names) if _visible(Path(n)))
        elif path.is_file() and path.suffix.lower() == ".csv":
            try:
                with open(path, newline="", encoding="utf-8-sig") as handle:
                    rows = list(csv.DictReader(handle))
            except (OSError, UnicodeDecodeError, csv.Error) as err:
                raise UserError(f"cannot read CSV manifest {str(path)!r}: {err}") from None
            column = next((k for k in (rows[0] if rows else {}) if k and k.strip().lower() == "path"), None)
            if column is None:
                raise UserError(
                    f"CSV manifest {str(path)!r} has no 'path' column; its first line must name one (path[,label])"
                )
            for line, row in enumerate(rows, start=2):
                rel = (row.get(column) or "").strip()
                if rel:
                    files.append(
                        manifest_path(path.parent, rel, path, line, allow_outside, opt_in="pass --allow-outside")
                    )
        elif path.is_file():
            files.append(path)
        else:
            skipped.append((str(source), "missing"))
    return files, skipped
