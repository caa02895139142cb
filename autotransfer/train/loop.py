"""The trial loop: fine-tune a ``Backbone`` under one ``TrainConfig``, validating as it goes.

Over 400 lines: the one training loop, with its parameter groups, gradient accumulation, BN modes,
L2-SP and validation; one loop keeps trials, the pick and the final retrain identical.
"""

from __future__ import annotations

import math
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, cast

import torch
import torch.nn.functional as F

from autotransfer.backbones import freeze as freeze_groups
from autotransfer.backbones import param_groups, reinit, run_groups, train_mode
from autotransfer.backbones.types import Backbone
from autotransfer.core.errors import AutotransferError, UserError
from autotransfer.data.device import EpochSampler
from autotransfer.train.config import TrainConfig, default_amp, resolve_device
from autotransfer.train.distill import SoftTargets
from autotransfer.train.metrics import check_metric, predict_logits, score
from autotransfer.train.prefix_cache import CachedPrefix, PrefixCache
from autotransfer.train.schedule import frozen_depth, unfreeze_steps

__all__ = ["DivergedError", "TrainResult", "train_protocol", "lr_lambda"]

#: Images per validation pass (a micro-batch bounds it after an out-of-memory).
EVAL_BATCH = 256
#: On CUDA the loss is checked for NaN/inf every this many steps (a host sync); on CPU every step.
CUDA_CHECK_EVERY = 16


class DivergedError(AutotransferError, RuntimeError):
    """The training loss became NaN or infinite at ``step`` (1-based); the trial has failed."""

    def __init__(self, step: int, loss: float) -> None:
        self.step = int(step)
        self.loss = float(loss)
        super().__init__(f"training diverged: loss became {self.loss} at step {self.step}; lower the learning rate")

    def __reduce__(self):
        return (DivergedError, (self.step, self.loss))


@dataclass
class TrainResult:
    """What one trial produced.

    Attributes:
        backbone: the trained ``Backbone`` (``.model`` holds the weights).
        config: the ``TrainConfig`` it ran.
        metric: ``accuracy`` or ``balanced_accuracy``.
        steps_done: optimizer steps taken (``< config.steps`` when stopped early).
        stopped_early: True when ``report`` asked to stop (the search layer prunes the trial).
        history: ``[(step, validation score)]`` in step order.
        train_loss: ``[(step, mean training loss since the previous validation)]``.
        final_score / best_score / best_step: last and best validation score (``None`` without val).
        final_val_loss: mean cross-entropy on the validation set at the last validation; it
            breaks ties between equal scores, which small validation sets make common.
        wall_time_s: the whole call, cache building and validation included.
        images_per_s: training images processed per second of ``wall_time_s``.
        peak_memory_bytes: ``torch.cuda.max_memory_allocated`` on GPU; the process RSS
            high-water mark (``getrusage``) on CPU.
        cached: whether the frozen prefix was served from a ``PrefixCache``; ``cache_hit``:
            whether the entry already existed; ``cache_build_s``: time spent computing prefix
            features in this trial; ``views_built``: augmentation views computed in this trial.
        notes: human-readable notes (cache skipped, dtype fallbacks...).
        unfrozen: ``[(step, group)]``: when each group that the schedule held frozen started to
            train (the first step that updated it), in order; empty for ``one-stage``.
        budget_stopped: ``stop`` ended the run early (the job's time budget); the model is kept.
    """

    backbone: Backbone
    config: TrainConfig
    metric: str
    steps_done: int
    stopped_early: bool
    history: list[tuple[int, float]]
    train_loss: list[tuple[int, float]]
    final_score: float | None
    final_val_loss: float | None
    best_score: float | None
    best_step: int | None
    wall_time_s: float
    images_per_s: float
    peak_memory_bytes: int
    device: str
    amp: bool
    channels_last: bool
    cached: bool
    cache_hit: bool
    cache_build_s: float
    views_built: int
    eval_time_s: float
    notes: list[str] = field(default_factory=list)
    unfrozen: list[tuple[int, int]] = field(default_factory=list)
    #: True when ``stop`` ended the run before its budget (the job's time ran out): the model is
    #: usable as trained so far, and with validation its last score is that of the stopped model
    budget_stopped: bool = False

    @property
    def model(self) -> torch.nn.Module:
        """The trained model (``backbone.model``)."""
        return self.backbone.model

    def attrs(self) -> dict:
        """Plain JSON values for trial attributes (everything but the model)."""
        return {
            "config": asdict(self.config),
            "metric": self.metric,
            "steps_done": self.steps_done,
            "stopped_early": self.stopped_early,
            "history": [list(h) for h in self.history],
            "train_loss": [list(h) for h in self.train_loss],
            "final_score": self.final_score,
            "final_val_loss": self.final_val_loss,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "wall_time_s": self.wall_time_s,
            "images_per_s": self.images_per_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "device": self.device,
            "amp": self.amp,
            "channels_last": self.channels_last,
            "cached": self.cached,
            "cache_hit": self.cache_hit,
            "cache_build_s": self.cache_build_s,
            "views_built": self.views_built,
            "eval_time_s": self.eval_time_s,
            "notes": list(self.notes),
            "unfrozen": [list(u) for u in self.unfrozen],
        }


def lr_lambda(steps: int, warmup_frac: float) -> Callable[[int], float]:
    """The lr multiplier at scheduler step ``t`` (0-based): linear warmup over
    ``round(warmup_frac * steps)`` steps, then cosine decay from 1 to 0 at ``steps``."""
    warmup = int(round(warmup_frac * steps))

    def factor(t: int) -> float:
        if warmup and t < warmup:
            return (t + 1) / warmup
        span = max(1, steps - warmup)
        progress = min(1.0, (t - warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train_protocol(
    backbone,
    train,
    val,
    config: TrainConfig,
    *,
    metric: str = "accuracy",
    report: Callable[[int, float], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: PrefixCache | None = None,
    stop: Callable[[], bool] | None = None,
    teachers: SoftTargets | None = None,
) -> TrainResult:
    """Fine-tune ``backbone`` on ``train`` for ``config.steps`` optimizer steps; validate on ``val``.

    Order: freeze groups ``0..f-1`` -> re-initialise the last ``r`` groups -> optimizer (SGD with
    momentum, nesterov off, or AdamW) over ``param_groups`` with linear warmup + cosine decay
    over ``steps`` -> train with groups in ``train_mode(d, bn_mode, r)`` -> validate every
    ``eval_every`` steps and at the end. Batches walk a fresh random permutation per epoch
    (sampler state is local to the call: equal seeds give equal runs). When ``f > 0`` and the
    backbone chains, the frozen prefix's outputs come from ``cache`` (see ``prefix_cache``;
    a private one when ``None``), epoch ``e < V`` using augmentation view ``e``. On CUDA the
    default is bf16 autocast and channels_last; the data stays on the device throughout.

    ``d`` is the schedule's frozen depth (``train.schedule``): ``f`` throughout for ``one-stage``;
    ``lp-ft`` and ``gradual`` start at ``G - r`` (only the head and the re-initialised groups
    train) and lower it to ``f``. The optimizer holds groups ``f..G-1`` from the start (the
    layer-wise lrs and the one lr schedule are unchanged); a group that does not train yet gets
    no gradient, which SGD and AdamW skip (no momentum, no weight decay, no L2-SP). The cache
    serves only the prefix ``0..f-1`` frozen for the whole run.

    Args:
        backbone: a fresh ``Backbone`` (its model is modified in place and returned).
        train: training ``DeviceBatches`` (uint8 images on the run's device).
        val: validation ``DeviceBatches``, or ``None`` to skip validation.
        config: the protocol and run settings; ``freeze``/``reinit`` are checked against ``G``.
        metric: ``accuracy`` or ``balanced_accuracy``.
        report: called as ``report(step, score)`` after each validation; returning True stops
            training (``stopped_early``); the search layer turns that into a pruned trial.
        progress: called as ``progress(step, steps)`` after every optimizer step.
        cache: a ``PrefixCache`` kept alive across trials to reuse frozen-prefix features.
        stop: called after every optimizer step; returning True ends the run there (the job's
            time budget ran out), validating the model as it stands first (``budget_stopped``).
        teachers: distil: the loss mixes the labels with these teachers' soft targets on each
            step's own augmented view (``SoftTargets``); the frozen-prefix cache is off (the
            teachers need the images).

    Raises:
        DivergedError: the loss became NaN or infinite (``.step``, ``.loss``).
        UserError: a config value does not fit this backbone or device.
    """
    start = time.perf_counter()
    config.validate(backbone.num_groups)
    check_metric(metric)
    device = resolve_device(config.device)
    if train.labels is None or (val is not None and val.labels is None):
        raise UserError("train_protocol needs labelled train and val batches, but got unlabelled ones")
    data_device = train.images.device
    if data_device.type != device.type:
        raise UserError(
            f"the training data is on {str(data_device)!r} but TrainConfig.device resolves to "
            f"{str(device)!r}; build DeviceBatches with device={str(device)!r}"
        )
    device = data_device
    for name, batches in (("train", train), ("val", val)):
        size = getattr(batches, "out_size", None) if batches is not None else None
        if size is not None and size != config.resolution:
            raise UserError(
                f"TrainConfig.resolution is {config.resolution!r} but the {name} batches produce "
                f"{size!r}-px images; build DeviceBatches with out_size={config.resolution!r}"
            )
    amp = default_amp(device) if config.amp is None else config.amp
    channels_last = True if config.channels_last is None else config.channels_last
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        # fixed input shapes for every step of every trial: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    notes: list[str] = []
    f, r, G = config.freeze, config.reinit, backbone.num_groups

    model = backbone.model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    freeze_groups(backbone, f)
    if r:
        reinit(backbone, r, seed=config.seed)

    # L2-SP (Li et al. 2018): alpha/2 ||w - w0||^2 on pretrained, trainable, kept backbone weights;
    # as in the paper it replaces weight decay on those weights (decay stays on head and reinit).
    sp_params = _l2sp_params(backbone, f, r) if config.l2sp > 0 else []
    sp_start = [p.detach().clone() for p in sp_params]
    groups = param_groups(
        backbone,
        f,
        lr=config.lr,
        head_lr_mult=config.head_lr_mult,
        layer_decay=config.layer_decay,
        weight_decay=config.weight_decay,
    )
    if sp_params:
        groups = _without_decay(groups, sp_params)
    optimizer = _optimizer(groups, config, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.steps, config.warmup_frac))
    # the schedule: groups depth..G-1 and the head train; depth falls from G - r to f (one-stage: f)
    plan = (config.steps, config.schedule, config.stage_frac, f, r, G)
    joins = unfreeze_steps(*plan)
    unfrozen: list[tuple[int, int]] = []
    depth = frozen_depth(1, *plan)
    if depth > f:
        freeze_groups(backbone, depth)

    # after an out-of-memory every pass shrinks with the micro-batch: validation and cache building too
    eval_batch = EVAL_BATCH if config.micro_batch is None else min(EVAL_BATCH, config.micro_batch)
    entry: CachedPrefix | None = None
    cache_hit = False
    cache_build_s = 0.0
    views_built_before = 0
    if f > 0 and config.cache_prefix and teachers is None:
        if not backbone.chain:
            notes.append(f"frozen-prefix cache off: {backbone.spec!r} does not chain its groups")
        else:
            cache = cache if cache is not None else PrefixCache()
            if config.micro_batch is not None:
                cache.chunk_size = min(cache.chunk_size, config.micro_batch)
            t0 = time.perf_counter()
            hits_before = cache.hits
            entry, note = cache.get(
                backbone,
                f,
                train,
                val,
                views=config.views,
                seed=config.seed,
                augment=config.augment,
                amp=amp,
                channels_last=channels_last,
            )
            cache_hit = cache.hits > hits_before
            cache_build_s = 0.0 if cache_hit else time.perf_counter() - t0
            views_built_before = 0 if entry is None else sum(entry.built)
            if note:
                notes.append(note)
            if entry is not None:
                notes.extend(n for n in entry.notes if n not in notes)

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext

    def forward_cached(x: torch.Tensor) -> torch.Tensor:  # on the cache's batches: entry is set
        if channels_last and x.dim() == 4 and not cast(CachedPrefix, entry).pooled:  # a no-op on a channels_last entry
            x = x.contiguous(memory_format=torch.channels_last)
        if f < G:
            x = run_groups(backbone, x, f, G)
        return backbone.forward_head(x)

    val_loss: list[float] = []

    def validate() -> float:
        """The validation score; the mean validation loss goes to ``val_loss`` (a tie-breaker)."""
        model.eval()
        if entry is not None and entry.val is not None:
            logits, labels = predict_logits(
                forward_cached, entry.val_batches(eval_batch, entry.step_dtype(amp)), amp=amp, channels_last=False
            )
        else:
            logits, labels = predict_logits(model, val.eval_batches(eval_batch), amp=amp, channels_last=channels_last)
        val_loss.append(float(F.cross_entropy(logits, labels.long())))
        return score(labels, logits.argmax(1), metric)

    gen = torch.Generator(device=device).manual_seed(config.seed)
    sampler = EpochSampler(len(train.labels), gen, device)
    labels = train.labels.to(device=device, dtype=torch.long)
    history: list[tuple[int, float]] = []
    losses: list[tuple[int, float]] = []
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bad_loss = torch.zeros((), device=device)
    check_every = CUDA_CHECK_EVERY if device.type == "cuda" else 1
    eval_time = 0.0
    stopped = False
    budget_stopped = False
    step = 0

    micro = min(config.micro_batch or config.batch_size, config.batch_size)
    train_mode(backbone, depth, config.bn_mode, r)
    for step in range(1, config.steps + 1):
        if len(unfrozen) < len(joins) and joins[len(unfrozen)][0] == step:
            unfrozen.extend(j for j in joins if j[0] == step)
            depth = frozen_depth(step, *plan)
            freeze_groups(backbone, depth)
            train_mode(backbone, depth, config.bn_mode, r)
        idx, epochs = sampler.next(config.batch_size)
        if entry is not None:
            view_idx = _view_indices(epochs, entry.views, gen, device)
            spent = cast(PrefixCache, cache).ensure(  # an entry comes from the cache
                entry, (e for e, _ in epochs if e < entry.views), backbone, train, channels_last=channels_last
            )
            if spent:  # building ran the model in eval mode
                cache_build_s += spent
                train_mode(backbone, depth, config.bn_mode, r)
            x = entry.batch(idx, view_idx, entry.step_dtype(amp))
            y = entry.train_labels[idx]
            forward = forward_cached
        else:
            x = train.augment(idx, gen) if config.augment else train.plain(idx)
            if channels_last:  # a no-op on DeviceBatches built with channels_last (search/prepared.py)
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            forward = model
        optimizer.zero_grad(set_to_none=True)
        soft = None
        if teachers is not None:
            with autocast():
                soft = teachers.targets(x)
        loss = _accumulate(forward, x, y, micro, autocast, teachers, soft)
        if sp_params:
            _add_l2sp_grad(sp_params, sp_start, config.l2sp)
        optimizer.step()
        scheduler.step()

        detached = loss.detach()
        finite = torch.isfinite(detached)
        first_bad = torch.where((first_bad < 0) & ~finite, torch.full_like(first_bad, step), first_bad)
        bad_loss = torch.where(finite, bad_loss, detached)
        loss_sum += torch.where(finite, detached, torch.zeros_like(detached))
        loss_count += 1
        out_of_time = stop is not None and step < config.steps and stop()
        is_eval = val is not None and (step % config.eval_every == 0 or step == config.steps or out_of_time)
        if step % check_every == 0 or is_eval or step == config.steps:
            if int(first_bad) >= 0:
                raise DivergedError(int(first_bad), float(bad_loss))
        if progress is not None:
            progress(step, config.steps)
        if is_eval:
            losses.append((step, float(loss_sum) / max(1, loss_count)))
            loss_sum.zero_()
            loss_count = 0
            t0 = time.perf_counter()
            value = validate()
            eval_time += time.perf_counter() - t0
            history.append((step, value))
            train_mode(backbone, depth, config.bn_mode, r)
            if out_of_time:
                budget_stopped = stopped = True
                break
            if report is not None and report(step, value):
                stopped = step < config.steps
                break
        elif out_of_time:
            budget_stopped = stopped = True
            break
    if loss_count:
        losses.append((step, float(loss_sum) / loss_count))

    model.eval()
    wall = time.perf_counter() - start
    best = max(history, key=lambda h: h[1]) if history else None
    return TrainResult(
        backbone=backbone,
        config=config,
        metric=metric,
        steps_done=step,
        stopped_early=stopped,
        history=history,
        train_loss=losses,
        final_score=history[-1][1] if history else None,
        final_val_loss=val_loss[-1] if val_loss else None,
        best_score=best[1] if best else None,
        best_step=best[0] if best else None,
        wall_time_s=wall,
        images_per_s=step * config.batch_size / wall if wall > 0 else float("nan"),
        peak_memory_bytes=_peak_memory(device),
        device=str(device),
        amp=amp,
        channels_last=channels_last,
        cached=entry is not None,
        cache_hit=cache_hit,
        cache_build_s=cache_build_s,
        views_built=0 if entry is None else sum(entry.built) - views_built_before,
        eval_time_s=eval_time,
        notes=notes,
        unfrozen=unfrozen,
        budget_stopped=budget_stopped,
    )


def _accumulate(
    forward,
    x: torch.Tensor,
    y: torch.Tensor,
    micro: int,
    autocast,
    teachers: SoftTargets | None = None,
    soft: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward and backward ``x`` ``(B, ...)`` in micro-batches of at most ``micro`` images,
    weighting each part's mean loss by its share of ``B`` so that the summed gradients are the
    full batch's. Returns the batch's mean loss (detached when split). With ``teachers``, the loss
    is theirs (``SoftTargets.loss``) against ``soft`` ``(B, C)``, the batch's soft targets."""

    def loss_of(logits: torch.Tensor, part: slice) -> torch.Tensor:
        if teachers is None or soft is None:
            return F.cross_entropy(logits, y[part])
        return teachers.loss(logits, y[part], soft[part])

    if micro >= len(y):
        with autocast():
            logits = forward(x)
        loss = loss_of(logits.float(), slice(None))
        loss.backward()
        return loss
    total = torch.zeros((), device=y.device)
    for start in range(0, len(y), micro):
        part = slice(start, start + micro)
        with autocast():
            logits = forward(x[part])
        loss = loss_of(logits.float(), part) * (len(y[part]) / len(y))
        loss.backward()
        total = total + loss.detach()
    return total


def _view_indices(
    epochs: list[tuple[int, int]], views: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """View of each batch element: epoch ``e < V`` uses view ``e`` (fresh augmentations, as
    on the fly); later epochs draw one of the ``V`` views uniformly per element."""
    parts = []
    for epoch, count in epochs:
        if epoch < views:
            parts.append(torch.full((count,), epoch, dtype=torch.long, device=device))
        else:
            parts.append(torch.randint(views, (count,), generator=generator, device=device))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _optimizer(groups: list[dict], config: TrainConfig, *, fused: bool = False) -> torch.optim.Optimizer:
    """SGD with momentum (nesterov off) or AdamW; ``fused`` (on CUDA) runs each step as a few
    fused kernels instead of one launch per parameter, where this torch supports it."""
    make: Callable[..., torch.optim.Optimizer]
    if config.optimizer == "sgd":
        make = lambda **kw: torch.optim.SGD(  # noqa: E731
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=False,
            weight_decay=config.weight_decay,
            **kw,
        )
    else:
        make = lambda **kw: torch.optim.AdamW(  # noqa: E731
            groups,
            lr=config.lr,
            betas=(config.momentum, 0.999),
            weight_decay=config.weight_decay,
            **kw,
        )
    if fused:
        try:
            return make(fused=True)
        except (TypeError, RuntimeError):  # torch without a fused kernel for this optimizer
            pass
    return make()


def _l2sp_params(backbone, f: int, r: int) -> list[torch.nn.Parameter]:
    """Trainable backbone parameters that keep their pretrained values (groups ``f..G-r-1``)."""
    named = dict(backbone.model.named_parameters())
    out: list[torch.nn.Parameter] = []
    for group in backbone.groups[f : backbone.num_groups - r]:
        out.extend(named[name] for name in group.params if named[name].requires_grad)
    return out


def _without_decay(groups: list[dict], sp_params: list[torch.nn.Parameter]) -> list[dict]:
    """Split optimizer groups so that L2-SP parameters get ``weight_decay = 0``."""
    sp_ids = {id(p) for p in sp_params}
    out = []
    for group in groups:
        params = list(group["params"])
        sp = [p for p in params if id(p) in sp_ids]
        rest = [p for p in params if id(p) not in sp_ids]
        if rest:
            out.append({**group, "params": rest})
        if sp:
            out.append({**group, "params": sp, "weight_decay": 0.0})
    return out


def _add_l2sp_grad(params: list[torch.nn.Parameter], start: list[torch.Tensor], alpha: float) -> None:
    """``grad += alpha * (w - w0)``: the gradient of ``alpha/2 ||w - w0||^2``, on the parameters
    that train now (a group the schedule holds frozen keeps ``grad = None``, which the optimizer skips)."""
    with_grad = [(p, w0) for p, w0 in zip(params, start) if p.requires_grad]
    if not with_grad:
        return
    grads: list[torch.Tensor] = []
    for p, _ in with_grad:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    ps = [p.detach() for p, _ in with_grad]
    diffs = torch._foreach_sub(ps, [w0 for _, w0 in with_grad])
    torch._foreach_add_(grads, diffs, alpha=alpha)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
