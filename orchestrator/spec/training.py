"""How every model is trained (``training:``) and when it counts as ready for repair."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from orchestrator import catalog
from orchestrator.spec.fields import Bool, Float, Int, _added, _Strict


class ReadinessSpec(_Strict):
    """When a model is ready for repair, decided while it trains from the validation split and
    the repair set only - never from the test set."""

    policy: str = Field(
        "repaired-val-qual",
        description=f"Built-in policy ({', '.join(catalog.READINESS_POLICIES)}) or an import"
        " path 'pkg.module:Class' of a trainer_image.readiness.ReadinessPolicy subclass."
        " repaired-val-qual: Qual(alpha, c) of the repaired model on the validation split,"
        " after every online repair (needs training.repair_every). val-loss: the unrepaired"
        " validation loss, every epoch (what early stopping watches).",
    )
    alpha: Float = Field(
        0.5,
        ge=0,
        le=1,
        description="Stakeholder weight of Qual = alpha x Acc_c + (1 - alpha) x Acc_total.",
    )
    repair_class: Int | None = Field(
        None,
        description="The repaired class whose Qual is watched; default: every repaired class,"
        " each decided on its own.",
    )
    method: str | None = Field(
        None,
        description="The repair method whose result is watched; default: every configured one.",
    )
    patience: Int = Field(
        5,
        gt=0,
        description="Fire after this many evaluations without improvement (one evaluation per"
        " online repair for repaired-val-qual, per epoch for val-loss).",
    )
    min_delta: Float = Field(
        0.0, ge=0, description="An improvement smaller than this does not reset the patience."
    )
    action: Literal["stop", "record"] = Field(
        "record",
        description="stop: end training once the policy has fired for everything it watches"
        " (the ready epochs' checkpoints are kept); record: only record in"
        " train/summary.json where it fired, to evaluate it against the full curve.",
    )

    @model_validator(mode="after")
    def _known(self) -> ReadinessSpec:
        if why := catalog.unknown("readiness policy", catalog.READINESS_POLICIES, self.policy):
            raise ValueError(why)
        return self


# TrainingSpec fields that came after the first sweeps (see TrainingSpec's serializer).
TRAINING_ADDITIONS = ("state_every", "repair_every", "readiness")


class TrainingSpec(_Strict):
    """The paper's training procedure; fields marked 'released code' reproduce its deviations."""

    optimizer: Literal["sgd"] = Field(
        "sgd", description="sgd (the only choice): torch's SGD with momentum and weight_decay."
    )
    lr: Float = Field(1e-2, gt=0, description="Initial learning rate (released code: 1e-4).")
    momentum: Float = Field(0.9, ge=0, lt=1, description="SGD momentum in [0, 1); 0 = none.")
    weight_decay: Float = Field(
        0.0, ge=0, description="SGD weight decay (L2 penalty); 0 = none, as in the paper."
    )
    lr_schedule: Literal["step", "compound"] = Field(
        "step",
        description="step: lr x gamma every lr_step_epochs epochs. compound: the released"
        " code's bug, current lr x gamma^floor(epoch/lr_step_epochs) every epoch.",
    )
    lr_step_epochs: Int = Field(
        10, gt=0, description="Epochs between learning-rate steps (see lr_schedule)."
    )
    lr_gamma: Float = Field(
        0.1, gt=0, le=1, description="Factor of each learning-rate step; 1 = a constant rate."
    )
    batch_size: Int = Field(128, gt=0, description="Released code effectively used 4.")
    max_epochs: Int = Field(
        30, gt=0, description="Train at most this many epochs (early stopping may end sooner)."
    )
    early_stopping: Bool = Field(
        True, description="Stop when val loss stalls (released code: never stopped early)."
    )
    patience: Int = Field(5, gt=0, description="Epochs without val-loss improvement.")
    min_delta: Float = Field(0.0, ge=0, description="Improvement smaller than this is none.")
    checkpoint_every: Int = Field(
        5, gt=0, description="Keep (and repair) the checkpoint of every N-th epoch."
    )
    checkpoint_first: Bool = Field(True, description="Also keep epoch 1.")
    checkpoint_convergence: Bool = Field(True, description="Also keep the convergence epoch.")
    validation_split: Float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of the training split held out for validation (see `validation`).",
    )
    # How the released code held out validation data and ordered batches (docs/science.md).
    validation: Literal["fixed", "per-seed"] = _added(
        "fixed",
        description="fixed: validation_split of the training split held out stratified with"
        " the dataset's split_seed, the same images for every training seed. per-seed: the"
        " released code - floor(validation_split x n) images chosen by numpy's"
        " RandomState(training seed), not stratified, so every seed validates on others.",
    )
    shuffle_each_epoch: Bool = _added(
        True,
        description="Draw a new batch order every epoch. false: one order, drawn once from the"
        " training seed, reused in every epoch (the released code never reshuffled).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: the GPU when one is visible, else the CPU. cuda: a GPU or the run"
        " fails as bad input. cpu: never a GPU (and no wait for the GPU guard).",
    )
    num_threads: Int | None = Field(
        None, gt=0, description="CPU threads for torch; default: what the scheduler gives."
    )
    state_every: Int | None = Field(
        1,
        ge=1,
        description="Store a resumable training state (train/state.pt) every this many epochs"
        " and at the last one, so that a killed run resumes after that epoch; null: never.",
    )
    repair_every: Int | None = Field(
        None,
        ge=1,
        description="Also repair the model after every N-th epoch's validation (dense online"
        " repair: records as for a checkpoint); null: only the checkpoint set is repaired.",
    )
    readiness: ReadinessSpec | None = Field(
        None, description="A policy that says, during training, when the model is ready for repair."
    )

    @model_serializer(mode="wrap")
    def _omit_unset_additions(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Fields added after sweeps existed are dumped only when they differ from their
        # default, so a spec that does not use them keeps its dump, its spec_hash and thus
        # its Kubernetes object names: submitting it again still creates nothing new.
        data = handler(self)
        for name in TRAINING_ADDITIONS:
            if name in data and getattr(self, name) == TrainingSpec.model_fields[name].default:
                del data[name]
        return data

    @model_validator(mode="after")
    def _online(self) -> TrainingSpec:
        if (
            self.readiness is not None
            and self.readiness.policy == "repaired-val-qual"
            and self.repair_every is None
        ):
            raise ValueError(
                "readiness policy 'repaired-val-qual' watches online repairs: set"
                " training.repair_every (e.g. 1)"
            )
        return self
