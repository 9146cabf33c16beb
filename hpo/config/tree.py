"""The pydantic tree of one training run: data, model and train sections, with documented defaults.

    hpo train my_run.yaml      # a YAML file of overrides of this tree

Defaults follow the lab report's section 6.1 architecture (conv blocks [20, 20, 20] and [20, 20],
kernel 2, max pooling 4, dense 512-256-128-64-1, LeakyReLU, redshift joined to the dense part,
Adam, batch 64, MSE). Four choices differ from the report so that a default run beats the
classic counts estimator (README, "Defaults"): log1p counts standardised per channel, Adam at
1e-3, dropout 0.2 after every dense layer (the report's best), and the 8 flips and right-angle
rotations of the square as augmentation. `preset: report` restores the report's own settings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import model_validator


SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed, which Keras calls) takes 0..2**32-1


class _Section(BaseModel):
    # inf and NaN are refused in every number: no setting means either.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# data


class DataConfig(_Section):
    path: Path = Field(Path("data/mock.h5"), description="HDF5 or .npz file following the data contract.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of clusters for validation.")
    test_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share held out for `hpo promote`; never seen by a study."
    )
    split_seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the train/validation/test shuffle.")
    max_clusters: int | None = Field(
        None, gt=10, description="Use only the first N clusters of the file (quick studies)."
    )
    max_in_memory_gb: float = Field(
        4.0, gt=0, description="Files whose float32 images are larger stream from HDF5 in blocks."
    )
    calibration_path: Path | None = Field(
        None, description="Labelled clusters never trained on (e.g. `hpo simulate` with another seed "
        "and the same settings) that set train.calibrate_sigma and train.calibrate_bias, when on, "
        "instead of the validation split, which is too small to measure a bias of 0.01 dex.")

    @model_validator(mode="after")
    def _room_to_train(self) -> DataConfig:
        if self.val_fraction + self.test_fraction > 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must leave at least 10% of the clusters to train on, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        return self


# ---------------------------------------------------------------------------------------------
# model


class InputConfig(_Section):
    transform: Literal["none", "log1p", "asinh", "sqrt"] = Field(
        "log1p", description="Pointwise transform of photon counts before the network."
    )
    standardize: bool = Field(
        True, description="Per-channel standardisation, fitted on the training split only."
    )


class PoolConfig(_Section):
    type: Literal["max", "avg", "none"] = Field("max", description="Pooling after each conv block.")
    size: int = Field(4, ge=1, description="Pooling window, pixels.")


class ActivationConfig(_Section):
    type: Literal["leaky_relu", "relu", "elu", "gelu", "linear"] = "leaky_relu"
    negative_slope: float = Field(0.3, ge=0, description="LeakyReLU slope for x < 0.")


class DropoutConfig(_Section):
    rate: float = Field(0.2, ge=0, lt=1, description="Fraction of units dropped.")
    placement: Literal["none", "every_dense", "one_dense"] = Field(
        "every_dense", description="After every hidden dense layer, or after the one at `index`."
    )
    index: int = Field(-1, description="Hidden dense layer for placement one_dense (-1: last).")


class RegularizerConfig(_Section):
    type: Literal["none", "l1", "l2", "l1l2"] = "none"
    l1: float = Field(1e-4, ge=0, description="L1 strength (types l1, l1l2).")
    l2: float = Field(1e-4, ge=0, description="L2 strength (types l2, l1l2).")
    target: Literal["kernel", "bias", "activity"] = Field(
        "kernel", description="What the penalty applies to."
    )
    layers: Literal["dense", "conv", "both"] = Field("dense", description="Which layers carry it.")


class ModelConfig(_Section):
    input: InputConfig = InputConfig()
    conv_blocks: list[list[int]] = Field(
        [[20, 20, 20], [20, 20]],
        description="Filters of each conv layer, grouped in blocks; a pooling layer ends each block.",
    )
    filters: int | None = Field(
        None, ge=1, description="If set, every conv layer gets this many filters (report's scan)."
    )
    width: float = Field(
        1.0, gt=0, le=16,
        description="Multiplier of every conv layer's filters (conv_blocks, or filters when set), "
        "rounded half up, at least 1; 1 builds the layout as written. Depth is searched as a "
        "categorical over conv_blocks layouts.",
    )
    kernel_size: int = Field(2, ge=1, description="Square conv kernel, pixels.")
    padding: Literal["same", "valid"] = "same"
    block: Literal["plain", "residual"] = Field(
        "plain",
        description="plain: each block's conv layers in a row (the report's). residual: the "
        "block's input is added to its last conv layer's output (after its BN, before its "
        "activation and the block's pooling), through a 1x1 conv where the channel count "
        "changes, and centre-cropped where padding valid shrinks the image.",
    )
    head: Literal["flatten", "global_avg", "global_max"] = Field(
        "flatten",
        description="What turns the last feature map into the dense part's input: flatten (every "
        "pixel of every filter, the report's), or the mean or maximum of each filter over the "
        "image (one number per filter, whatever the image size).",
    )
    pool: PoolConfig = PoolConfig()
    conv_activation: ActivationConfig = ActivationConfig()
    dense_activation: ActivationConfig = ActivationConfig()
    batch_norm: bool = Field(False, description="BatchNormalization after each conv layer.")
    dense: list[int] = Field(
        [512, 256, 128, 64], description="Hidden dense layers; the output layer is added after."
    )
    dropout: DropoutConfig = DropoutConfig()
    regularizer: RegularizerConfig = RegularizerConfig()
    use_redshift: bool = Field(True, description="Join the redshift to the dense part.")
    use_exposure: bool = Field(
        False,
        description="Give the network each cluster's exposure (data key exposure_s, s; a file "
        "without it is refused), as exposure_mode says. Off: the network sees counts only and "
        "must guess the depth from the background.",
    )
    exposure_mode: Literal["head", "rate", "both"] = Field(
        "head",
        description="head: standardised log10 exposure joined to the dense part beside the "
        "redshift; rate: counts scaled to the training split's median exposure (x t_ref / t) "
        "before the transform; both.",
    )

    def layout(self) -> list[list[int]]:
        """The filters of each conv layer as the builder lays them out, grouped in blocks:
        conv_blocks (every layer at `filters` when set) times `width`, rounded half up, >= 1."""
        return [[max(1, math.floor((self.filters or f) * self.width + 0.5)) for f in block]
                for block in self.conv_blocks]

    @model_validator(mode="after")
    def _check_layout(self) -> ModelConfig:
        if not self.conv_blocks or any(not block for block in self.conv_blocks):
            raise ValueError(f"conv_blocks needs at least one non-empty block, got {self.conv_blocks}")
        if any(f < 1 for block in self.conv_blocks for f in block):
            raise ValueError(f"conv_blocks filters must be >= 1, got {self.conv_blocks}")
        if any(units < 1 for units in self.dense):
            raise ValueError(f"dense units must be >= 1, got {self.dense}")
        if self.dropout.placement == "one_dense" and self.dense:
            if not -len(self.dense) <= self.dropout.index < len(self.dense):
                raise ValueError(
                    f"dropout.index must address one of {len(self.dense)} dense layers, "
                    f"got {self.dropout.index}"
                )
        return self


# ---------------------------------------------------------------------------------------------
# train


class LossConfig(_Section):
    type: Literal["mse", "gaussian_nll"] = Field(
        "mse", description="mse, or Gaussian negative log-likelihood with a sigma head."
    )
    sigma_param: Literal["log_sigma", "softplus"] = Field(
        "softplus", description="How the sigma head's output becomes sigma > 0."
    )
    warm_start_epochs: int = Field(
        0, ge=0, description="gaussian_nll only: first train the mean with MSE for this many epochs."
    )


class OptimizerConfig(_Section):
    type: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, description="Initial learning rate.")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd and rmsprop momentum.")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum.")
    weight_decay: float = Field(1e-4, ge=0, description="adamw: decoupled weight decay.")
    clipnorm: float | None = Field(None, gt=0, description="Clip each gradient to this norm.")


class ScheduleConfig(_Section):
    type: Literal["constant", "exponential", "cosine"] = Field(
        "constant", description="exponential: from learning_rate to final_learning_rate over the run."
    )
    final_learning_rate: float = Field(1e-5, gt=0, description="Rate at the last epoch.")
    warmup_epochs: int = Field(0, ge=0, description="cosine: linear warm-up epochs.")


class AugmentConfig(_Section):
    flips: bool = Field(True, description="Random horizontal and vertical flips.")
    rot90: bool = Field(True, description="Random rotations by multiples of 90 degrees.")
    rotation: bool = Field(
        False, description="Arbitrary-angle rotation with interpolation (the report found it hurts)."
    )
    tta: bool = Field(
        False, description="Evaluate as the mean over the 8 flips and right-angle rotations."
    )


class TrainConfig(_Section):
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seeds weights, shuffling and dropout.")
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better val_residual_std."
    )
    restore_best_weights: bool = Field(True, description="Keep the epoch with the best val metric.")
    calibrate_sigma: bool = Field(
        False, description="gaussian_nll: after training, scale sigma so that 68.3% of the calibration "
        "clusters' residuals lie within 1 sigma; the saved model applies the scale.")
    calibrate_bias: bool = Field(
        False, description="After training, shift log mass by minus the mean residual of the "
        "calibration clusters, per bin of exposure for a model that takes it; the saved model applies "
        "the shift. Each bin needs 400 clusters (see data.calibration_path). The validation metrics a "
        "run reports are the calibrated model's: calibrated on the validation split itself, its bias "
        "there is 0 (and with calibrate_sigma its coverage 0.683) by construction.")
    calibrate_bias_bins: int = Field(
        5, ge=1, le=20, description="Equal-count bins of log exposure for calibrate_bias, joined "
        "piecewise-linearly (1: one shift; always 1 for a model without the exposure).")

    @model_validator(mode="after")
    def _check_calibration(self) -> TrainConfig:
        if self.calibrate_sigma and self.loss.type != "gaussian_nll":
            raise ValueError("calibrate_sigma needs a sigma to scale: set loss.type gaussian_nll")
        return self
    mixed_precision: bool = Field(False, description="float16 compute (GPUs).")
    jit_compile: bool | Literal["auto"] = Field(
        "auto", description="XLA compilation of the train step; auto: wherever Keras can (as model.fit)."
    )
    loop: Literal["fit", "device"] = Field(
        "fit", description="fit: Keras' model.fit, on any backend (the CPU path). device: Keras' JAX "
        "backend only (refused on another), the clusters kept on the accelerator and one compiled "
        "call per epoch (hpo/training/device_loop.py; always compiled, whatever jit_compile says); "
        "the same model, metrics, pruning and early stopping.")
    device_dispatch: Literal["auto", "epoch", "step"] = Field(
        "auto", description="train.loop device: `epoch` runs a whole epoch per compiled call, "
        "`step` one optimizer step per call (data, shuffle and augmentation still on the device); "
        "auto: epoch on a GPU, step on a CPU, where XLA runs the gradient convolutions inside a "
        "loop body on a slow path (jax-ml/jax#12868).")


class RunConfig(_Section):
    """Everything one training run needs; a search space overrides parts of it by dotted path."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
