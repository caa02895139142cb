"""The names under which a study records itself in Optuna's storage: one place for every key.

Study user attributes (``ATTR``) hold everything a worker, the pick, ``export``, the surface and
the report need, so a study is self-describing. Trial user attributes record what a trial was (a
control, where an enqueued protocol came from, its integer freeze/reinit depths) and how it ran
(the device, the precision, why it was pruned or failed). Optuna's own system attributes that
autotransfer reads are named here too.
"""

from __future__ import annotations

__all__ = [
    "ATTR",
    "CONTROL_ATTR",
    "SOURCE_ATTR",
    "HISTORY_ATTR",
    "VAL_LOSS_ATTR",
    "FREEZE_ATTR",
    "REINIT_ATTR",
    "NUM_GROUPS_ATTR",
    "FAIL_REASON_ATTR",
    "PRUNE_REASON_ATTR",
    "RUNGS_ATTR",
    "UNFROZEN_ATTR",
    "DEVICE_ATTR",
    "DEVICE_NAME_ATTR",
    "PRECISION_ATTR",
    "WORKER_ATTR",
    "RETRY_ATTR",
    "BUDGET_STOP_ATTR",
    "KEPT_MODEL_ATTR",
    "FIXED_PARAMS",
]

#: Study user-attribute keys: everything a worker needs is stored in the study.
ATTR = {
    "settings": "autotransfer.settings",
    "profile": "autotransfer.profile",
    "prior": "autotransfer.prior",
    "space": "autotransfer.space",
    "versions": "autotransfer.versions",
    "final": "autotransfer.final",
    "sampler": "autotransfer.sampler",
    "pick": "autotransfer.pick",
    "self_training": "autotransfer.self_training",
    "ledger": "autotransfer.ledger",
    "model_choice": "autotransfer.model_choice",
    # who began creating the study, and when: written first, while ``settings`` is written last,
    # so a study that has it without settings is still being created (``search.study.load_study``)
    "creating": "autotransfer.creating",
}

# Trial user attributes: what the trial is.
#: Names a control ("scratch" or "probe"); absent on search trials.
CONTROL_ATTR = "control"
#: Where an enqueued protocol came from ("prior", "recommended", "warm-start:STUDY#N"...).
SOURCE_ATTR = "source"
#: The integer depths the trial's fractions gave on its model: frozen groups, re-initialised groups, G.
FREEZE_ATTR = "freeze"
REINIT_ATTR = "reinit"
NUM_GROUPS_ATTR = "num_groups"

# Trial user attributes: how it ran.
#: Mean validation loss at the last validation (breaks ties between equal scores).
VAL_LOSS_ATTR = "val_loss"
#: Every validation evaluation of a completed or pruned trial: ``[[step, score], ...]`` in step order.
HISTORY_ATTR = "history"
#: Why a trial failed (NaN loss, out of memory...), recorded before it is marked FAIL.
FAIL_REASON_ATTR = "fail_reason"
#: Why a trial was pruned (the rung, its score, the bar and the noise margin), or kept.
PRUNE_REASON_ATTR = "prune_reason"
#: Every rung decision of the trial (step, score, bar, margin, pruned).
RUNGS_ATTR = "rungs"
#: When each group the trial's schedule held frozen started to train: ``[[step, group], ...]``
#: (``TrainResult.unfrozen``; absent when nothing waited: one-stage, or f = G - r).
UNFROZEN_ATTR = "unfrozen"
#: The device the trial ran on (``cpu``, ``cuda:0``), the GPU's name, and the precision
#: (``fp32`` or ``bf16-autocast``): a study runs at one precision (docs/devices.md).
DEVICE_ATTR = "device"
DEVICE_NAME_ATTR = "device_name"
PRECISION_ATTR = "precision"
#: The worker (host:pid) that ran the trial.
WORKER_ATTR = "worker"
#: The number of the dead trial this one re-runs.
RETRY_ATTR = "retry_of"

#: The step at which the job's time budget stopped the trial (its model as trained so far is
#: scored; absent when it ran its whole budget).
BUDGET_STOP_ATTR = "budget_stopped_at"
#: True when the process that ran the trial kept its trained model (``search.trial_models``).
KEPT_MODEL_ATTR = "kept_model"

#: Optuna's system attribute holding an enqueued trial's parameters.
FIXED_PARAMS = "fixed_params"
