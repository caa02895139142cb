"""Scale-out: many workers on one study through a shared RDB storage, surviving worker loss.

A *worker* is one process that joins an existing study and runs its trials until the
study holds its budget of finished search trials (``autotransfer worker``). Workers meet
only in the storage: SQLite serves several workers on one machine, PostgreSQL serves many
machines. Fault tolerance is Optuna's: ``RDBStorage`` heartbeats plus
``RetryHeartbeatStaleTrialCallback`` (see ``autotransfer.search.storage``). A killed
worker's running trial stops beating; the next worker to start a trial (or to check the
budget) after the grace period marks it FAIL and re-queues its parameters as a WAITING
trial that remembers the original trial number; ``ask`` hands each WAITING trial to one
worker only (a row lock), so no trial runs on two workers at once. A trial stopped by Ctrl-C
(or SIGTERM) is re-queued the same way by the process it ran in (``interruptible``).

Over 400 lines: planning, launching, waiting on and stopping worker processes, and the worker loop
itself, which share the signal handling and the process bookkeeping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState

from autotransfer.core.errors import AutotransferTimeoutError, UserError
from autotransfer.core.knobs import check_device
from autotransfer.core.schema import FAIL_REASON_ATTR, RETRY_ATTR, WORKER_ATTR
from autotransfer.core.validation import check_timeout
from autotransfer.search.retry import retried_trial_number
from autotransfer.search.run import join_study
from autotransfer.search.storage import STORAGE_ENV

__all__ = [
    "WorkerPlan",
    "available_cores",
    "visible_gpus",
    "plan_workers",
    "worker_command",
    "worker_env",
    "launch_local_workers",
    "wait_workers",
    "terminate_workers",
    "run_local_workers",
    "run_worker",
    "refuse_other_precision",
    "worker_tag",
]


@dataclass(frozen=True)
class WorkerPlan:
    """How one local worker runs: its device, its GPU (``CUDA_VISIBLE_DEVICES``) and CPU threads."""

    index: int
    device: str
    gpu: str | None
    threads: int


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as ``CUDA_VISIBLE_DEVICES`` entries (ids or UUIDs)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    if listed is not None:
        entries = [e.strip() for e in listed.split(",") if e.strip()]
        return entries[:count]
    return [str(i) for i in range(count)]


def plan_workers(
    n: int,
    *,
    device: str = "auto",
    gpus: Sequence[str] | None = None,
    cores: int | None = None,
    threads: int | None = None,
) -> list[WorkerPlan]:
    """Assign ``n`` local workers to devices.

    With GPUs (``device`` ``auto`` or ``cuda``), worker ``i`` gets GPU ``i % len(gpus)``: one per GPU
    when ``n <= len(gpus)``. On CPU, each worker gets ``cores // n`` torch threads (at least 1),
    so that the workers split the cores instead of fighting over them. ``threads`` overrides.
    """
    if n < 1:
        raise UserError(f"--workers must be >= 1, but got {n!r}")
    check_device(device, "--device")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, but got {threads!r}")
    cores = cores or available_cores()
    per_worker = threads or max(1, cores // n)
    gpus = list(visible_gpus() if gpus is None and device != "cpu" else gpus or [])
    if device.startswith("cuda") and not gpus:
        raise UserError(f"--device {device} asks for a GPU, but none is visible here: use --device cpu or auto")
    if device == "cpu" or not gpus:
        return [WorkerPlan(i, "cpu", None, per_worker) for i in range(n)]
    return [WorkerPlan(i, "cuda", gpus[i % len(gpus)], per_worker) for i in range(n)]


def worker_command(study_name: str, plan: WorkerPlan, *, timeout: float | None = None, quiet: bool = True) -> list[str]:
    """The command line of a local worker (``python -m autotransfer.cli worker ...``). It names no
    storage: every local user sees a command line (``ps``), so the storage URL, which may hold a
    password, reaches the worker through its environment (``worker_env``)."""
    cmd = [
        sys.executable,
        "-m",
        "autotransfer.cli",
        "worker",
        "--study",
        study_name,
        "--device",
        plan.device,
        "--threads",
        str(plan.threads),
    ]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    if quiet:
        cmd.append("--quiet")
    return cmd


def worker_env(
    storage_url: str, plan: WorkerPlan, plans: Sequence[WorkerPlan], env: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of local worker ``plan``: this process's, ``env``, the storage URL as
    ``$AUTOTRANSFER_STORAGE`` (``/proc/PID/environ`` is readable by its owner only, unlike the
    command line), and its share of the machine (threads, GPU)."""
    child_env = {**os.environ, **(env or {}), STORAGE_ENV: storage_url}
    child_env["OMP_NUM_THREADS"] = child_env["MKL_NUM_THREADS"] = str(plan.threads)
    if plan.device == "cpu":
        # idle OpenMP threads sleep instead of spinning: on a machine shared with other
        # work, spinning threads made a 2-thread trial 6x slower (benchmarks/RESULTS.md)
        child_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if plan.gpu is not None:
        child_env["CUDA_VISIBLE_DEVICES"] = plan.gpu
        # train.prefix_cache.WORKERS_PER_DEVICE_ENV: the cache cap is shared by these
        child_env["AUTOTRANSFER_WORKERS_PER_DEVICE"] = str(sum(p.gpu == plan.gpu for p in plans))
    return child_env


def _check_shareable(storage_url: str) -> None:
    if storage_url.startswith("sqlite:///") and storage_url[len("sqlite:///") :] in ("", ":memory:"):
        raise UserError(
            f"storage {storage_url!r} lives in one process's memory, so other workers cannot join it:"
            " pass a file (sqlite:///studies/autotransfer.db) or a postgresql:// URL"
        )
    if storage_url.startswith("sqlite://") and not storage_url.startswith("sqlite:///"):
        raise UserError(f"storage {storage_url!r} is an in-memory SQLite database: pass a file or a server URL")


def launch_local_workers(
    study_name: str,
    storage_url: str,
    n: int,
    *,
    device: str = "auto",
    threads: int | None = None,
    timeout: float | None = None,
    log_dir: str | Path | None = None,
    env: dict[str, str] | None = None,
    quiet: bool = True,
) -> list[subprocess.Popen]:
    """Start ``n`` worker processes on this machine for an existing study; return them at once.

    Each runs ``python -m autotransfer.cli worker --study NAME`` with the storage URL in its
    environment (``worker_env``: not on its command line, where ``ps`` shows it) and its device
    plan (``plan_workers``): ``CUDA_VISIBLE_DEVICES`` set to its GPU, or ``--threads`` and
    ``OMP_NUM_THREADS`` set to its share of the cores (and ``OMP_WAIT_POLICY=PASSIVE`` unless
    set). Each starts in a session of its own, so a
    Ctrl-C in the terminal reaches only the caller, which stops the workers by PID
    (``terminate_workers``: their trials in flight are re-queued, see there). With ``log_dir`` each worker writes ``worker-<i>.log`` there;
    otherwise it shares the caller's stdout and stderr. ``env`` adds environment variables.
    """
    _check_shareable(storage_url)
    plans = plan_workers(n, device=device, threads=threads)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        for plan in plans:
            child_env = worker_env(storage_url, plan, plans, env)
            out = None
            if log_dir is not None:
                out = open(Path(log_dir) / f"worker-{plan.index}.log", "wb")  # noqa: SIM115 - handed to the child
            try:
                proc = subprocess.Popen(
                    worker_command(study_name, plan, timeout=timeout, quiet=quiet),
                    env=child_env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT if out is not None else None,
                    start_new_session=True,
                )
            finally:
                if out is not None:
                    out.close()  # the child holds its own descriptor
            # each worker's plan and log ride on its Popen (tests stand a fake Popen in for subprocess's)
            proc.plan = plan  # type: ignore[attr-defined]
            proc.log_path = Path(log_dir) / f"worker-{plan.index}.log" if log_dir is not None else None  # type: ignore[attr-defined]
            procs.append(proc)
    except BaseException:
        terminate_workers(procs)
        raise
    return procs


def terminate_workers(procs: Sequence[subprocess.Popen]) -> None:
    """Stop workers by PID with SIGKILL and reap them.

    Nothing is lost: every finished trial is already committed to the storage, and a trial in
    flight is left RUNNING without heartbeats, so the next worker (or the next ``tune`` of the
    study) finds it stale and re-queues it with its parameters, the path that recovers from a
    crashed worker. A catchable signal would be worse here: turned into ``KeyboardInterrupt`` it
    can be swallowed (seen: raised inside a garbage-collector callback, the worker ran on), and
    a worker interrupted inside a write can hold SQLite's lock while it unwinds (seen: another
    worker failed with "database is locked").
    """
    for proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.wait()


def wait_workers(
    procs: Sequence[subprocess.Popen],
    *,
    timeout: float | None = None,
    poll: float = 1.0,
    on_poll: Callable[[], None] | None = None,
) -> list[int]:
    """Wait for every worker to exit; return their exit codes in order.

    ``on_poll`` runs every ``poll`` seconds (progress display). On Ctrl-C (or SIGTERM to the
    caller) and when ``timeout`` seconds pass, the workers are stopped by PID
    (``terminate_workers``) before ``KeyboardInterrupt`` / ``TimeoutError`` is raised.
    """
    end = None if timeout is None else time.monotonic() + timeout
    previous = None
    in_main = _in_main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while any(p.poll() is None for p in procs):
            if on_poll is not None:
                on_poll()
            if end is not None and time.monotonic() > end:
                raise AutotransferTimeoutError(f"workers still running after {timeout} s")
            time.sleep(poll)
        if on_poll is not None:
            on_poll()
        return [int(p.returncode) for p in procs]
    except BaseException:
        terminate_workers(procs)
        raise
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _last_line(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_local_workers(
    study_name: str,
    storage_url: str,
    n: int,
    *,
    device: str = "auto",
    timeout: float | None = None,
    ui=None,
    log_dir: str | Path | None = None,
) -> int:
    """Run an existing study on ``n`` local workers until its budget is met (``tune --workers N``).

    Shows the study's progress by polling the storage; stops every worker by PID on Ctrl-C.
    Returns the number of finished search trials. A worker that fails while the budget is
    still unmet is a one-line ``UserError`` quoting its last log line.
    """
    from autotransfer.search.progress import NullUI
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import load_study, read_settings, search_trials

    ui = ui or NullUI()
    study = load_study(study_name, open_storage(storage_url, heartbeat=False))
    total = read_settings(study).trials
    _release_gpu_memory()
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="autotransfer-workers-"))
    procs = launch_local_workers(study_name, storage_url, n, device=device, timeout=timeout, log_dir=log_dir)
    for proc in procs:
        plan = proc.plan  # type: ignore[attr-defined]  # set by launch_local_workers
        where = f"GPU {plan.gpu}" if plan.gpu is not None else f"CPU, {plan.threads} thread(s)"
        ui.note(f"worker {plan.index}: pid {proc.pid}, {where}")
    ui.note(f"worker logs: {log_dir}")
    ui.search_start(total=total, done=len(search_trials(study)))

    def show_progress() -> None:
        try:
            ui.search_advance(len(search_trials(study)))
        except Exception:  # noqa: BLE001 - a busy storage must not stop the workers; next poll retries
            pass

    try:
        codes = wait_workers(procs, on_poll=show_progress, poll=2.0)
    finally:
        ui.search_end()
    done = len(search_trials(study))
    failed = [(p, c) for p, c in zip(procs, codes) if c != 0]
    if failed:
        proc, code = failed[0]
        reason = _last_line(proc.log_path) or "no output"  # type: ignore[attr-defined]  # set by launch_local_workers
        message = (
            f"{len(failed)} of {n} workers failed (worker {proc.plan.index}, pid {proc.pid}, exit {code}: {reason});"  # type: ignore[attr-defined]  # set by launch_local_workers
            f" logs in {log_dir}"
        )
        if done < total:
            raise UserError(message + ": fix the cause and re-run to resume the study")
        ui.note(message)
    return done


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def worker_tag() -> str:
    """``host:pid``: recorded on each trial a worker runs (``WORKER_ATTR``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _WorkerUI:
    """Wraps a progress UI: tags each trial with the worker (``host:pid``) and, on a retry, the
    trial it retries; remembers the trial in flight."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.tag = worker_tag()
        self.current: int | None = None

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def trial_start(self, trial, protocol) -> None:
        self.current = trial.number
        trial.set_user_attr(WORKER_ATTR, self.tag)
        original = retried_trial_number(trial)
        if original is not None:
            trial.set_user_attr(RETRY_ATTR, original)
        self.inner.trial_start(trial, protocol)


def _lost_to_another_worker(study_name: str, storage, number: int | None) -> bool:
    """Whether this worker's trial ``number`` was failed by another worker (its heartbeat judged stale)."""
    if number is None:
        return False
    from autotransfer.search.study import load_study

    try:
        trial = load_study(study_name, storage).trials[number]
    except Exception:  # noqa: BLE001 - only a diagnosis; the original error is re-raised
        return False
    return trial.state == TrialState.FAIL and FAIL_REASON_ATTR not in trial.user_attrs


def refuse_other_precision(study_name: str, storage: str | None, device: str | None) -> None:
    """Raise a one-line ``UserError`` when ``study_name``'s trials ran at another precision than
    this worker would (``objective.precision_refusal``: fp32 on CPU, bf16 autocast on a GPU with
    native bf16), before the worker loads any data. ``device`` ``None`` means the study's."""
    from autotransfer.search.objective import precision_refusal, trial_precision
    from autotransfer.search.storage import open_storage, storage_location
    from autotransfer.search.study import JOIN_WAIT, load_study, read_settings
    from autotransfer.train.config import resolve_device

    store = open_storage(storage_location(storage), heartbeat=False, must_exist=True)
    study = load_study(study_name, store, wait=JOIN_WAIT)  # its creator may still be writing its settings
    mine = resolve_device(device or read_settings(study).device)
    refusal = precision_refusal(study, trial_precision(mine), str(mine))
    if refusal is not None:
        raise UserError(refusal)


def run_worker(
    study_name: str,
    storage: str | None,
    *,
    device: str | None = "auto",
    threads: int | None = None,
    timeout: float | None = None,
    ui=None,
    quiet: bool = False,
) -> int:
    """One worker (``autotransfer worker``): join ``study_name`` and run trials until its budget is met.

    ``threads`` sets ``torch.set_num_threads`` (CPU workers sharing a machine split its cores).
    ``device`` is this machine's (default ``auto``: CUDA when present); ``None`` keeps the study's.
    The study, its data fingerprint and the package versions are checked by
    ``autotransfer.search.run.join_study``, the precision its trials ran at by
    ``refuse_other_precision`` (a mismatch is a one-line ``UserError``). Each trial
    records the worker (``host:pid``) that ran it. If another worker judged this worker's trial
    stale (a stall longer than the grace period) and re-queued it, that trial's result is
    dropped and the worker carries on. Returns the number of finished search trials.
    """
    import torch

    from autotransfer.search.progress import NullUI
    from autotransfer.search.storage import open_storage, storage_location

    check_timeout(timeout)
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, but got {threads!r}")
        torch.set_num_threads(threads)
    if quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    refuse_other_precision(study_name, storage, device)
    wrapped = _WorkerUI(ui or NullUI())
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if end is None else max(0.0, end - time.monotonic())
        try:
            return join_study(study_name, storage, device=device, ui=wrapped, timeout=left)
        except ValueError as err:
            # optuna's tell refuses a trial that another worker already marked FAIL as stale
            if not str(err).startswith("Cannot tell a FAIL trial"):
                raise
            store = open_storage(storage_location(storage), heartbeat=False)
            if not _lost_to_another_worker(study_name, store, wrapped.current):
                raise
            wrapped.note(
                f"trial {wrapped.current} was failed as stale by another worker (no heartbeat for the"
                " grace period) and re-queued: dropped its result, carrying on"
            )
            wrapped.current = None
