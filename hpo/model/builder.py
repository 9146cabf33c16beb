"""Builds the Keras CNN from a ModelConfig: images and redshift in, log mass (and sigma) out.

    hpo train run.yaml           # builds this model from the run's `model:` section

Inputs:  images     (N, H, W, C) float32 photon counts, channels last (50 x 50 x 10 by default)
         redshift   (N, 1) float32
         exposure_s (N, 1) float32 seconds, only with model.use_exposure
Output:  log_mass (N, 1) = [mu], or (N, 2) = [mu, sigma] with a sigma head; log10(M500/Msun), dex

    images -> [augment] -> [x t_ref / exposure: exposure_mode rate, both] -> transform -> standardise
           -> { conv (+BN) -> act } x layers -> pool   (one per conv block; filters x width)
           -> flatten | global avg | global max (model.head)
           -> concat(redshift [, log exposure: head, both])
           -> { dense -> act -> [dropout] } x dense -> mu [, sigma]

    model.block residual (post-activation, as ResNet v1), per conv block:
        in -> { conv (+BN) -> act } x (layers - 1) -> conv (+BN) -> add(shortcut) -> act -> pool
        shortcut: in [-> centre crop: padding valid] [-> 1x1 conv (+BN): channels change]
        the branch's last conv kernel (its BN's gamma with batch_norm) starts at zero
    Layer names are the plain block's (conv{b}_{i}, bn{b}_{i}, conv{b}_{i}_act, pool{b}) plus
    add{b}, shortcut{b}, shortcut{b}_bn, shortcut{b}_crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from hpo.config.tree import ActivationConfig
from hpo.config.tree import AugmentConfig
from hpo.config.tree import ModelConfig
from hpo.config.tree import RegularizerConfig
from hpo.inference.layers import CountsTransform
from hpo.inference.layers import ExposureScale
from hpo.inference.layers import LogExposure
from hpo.inference.layers import LogMassShift
from hpo.inference.layers import RandomDihedral
from hpo.inference.layers import SigmaScale

EXPOSURE_INPUT = "exposure_s"  # the input's name: the data contract's key
SIGMA_SCALE = "sigma_scale"  # the last layer of a model trained with train.calibrate_sigma
LOG_MASS_SHIFT = "log_mass_shift"  # the layer before it, with train.calibrate_bias
# model.head: the layer between the last feature map and the dense part, and its name
HEADS = {"flatten": keras.layers.Flatten, "global_avg": keras.layers.GlobalAveragePooling2D,
         "global_max": keras.layers.GlobalMaxPooling2D}
HEAD_NAMES = {"flatten": "flatten", "global_avg": "global_pool", "global_max": "global_pool"}


@dataclass(frozen=True)
class InputStats:
    """What the builder learns from the training split only.

    Attributes:
        channel_mean, channel_var: (C,) per-channel mean and variance of transformed counts.
        label_mean, label_std: mean and std of training log10 M (output initialisers).
        redshift_mean, redshift_std: for standardising the redshift input.
        exposure_ref_s: median training exposure, s (the unit of counts in exposure_mode rate).
        log_exposure_mean, log_exposure_std: of log10 exposure, for the head input.
    """

    channel_mean: np.ndarray
    channel_var: np.ndarray
    label_mean: float
    label_std: float
    redshift_mean: float
    redshift_std: float
    exposure_ref_s: float = 1.0
    log_exposure_mean: float = 0.0
    log_exposure_std: float = 1.0

    @classmethod
    def fit(
        cls, images: np.ndarray, redshift: np.ndarray, log_mass: np.ndarray, transform: str,
        exposure: np.ndarray | None = None, exposure_mode: str | None = None,
    ) -> InputStats:
        """Statistics of a training split; images (N, H, W, C) counts.

        Args:
            exposure: (N,) exposure of the clusters of `images`, s, for a model that takes it.
            exposure_mode: a model's model.exposure_mode; with rate or both, the channel
                statistics are those of counts at the median exposure, as the network sees them.
        """
        sample = images[: min(len(images), 4096)]
        extra: dict[str, float] = {}
        if exposure is not None:
            log_t = np.log10(np.asarray(exposure, np.float64))
            extra = {"exposure_ref_s": float(np.median(exposure)),
                     "log_exposure_mean": float(np.mean(log_t)),
                     "log_exposure_std": float(max(np.std(log_t), 1e-3))}
            if exposure_mode in ("rate", "both"):
                scale = extra["exposure_ref_s"] / np.asarray(exposure[: len(sample)], np.float32)
                sample = sample * scale[:, None, None, None]
        x = np.asarray(CountsTransform(transform)(sample))
        return cls(
            channel_mean=x.mean(axis=(0, 1, 2)),
            channel_var=np.maximum(x.var(axis=(0, 1, 2)), 1e-8),
            label_mean=float(np.mean(log_mass)),
            label_std=float(max(np.std(log_mass), 1e-3)),
            redshift_mean=float(np.mean(redshift)),
            redshift_std=float(max(np.std(redshift), 1e-3)),
            **extra,
        )


def build_model(
    cfg: ModelConfig,
    *,
    image_shape: tuple[int, int, int],
    stats: InputStats,
    sigma_head: str | None = None,
    augment: AugmentConfig | None = None,
    seed: int | None = None,
    calibrate_sigma: bool = False,
    calibrate_bias_bins: int | None = None,
) -> keras.Model:
    """Builds (does not compile) the network.

    Args:
        cfg: the `model` section of the run config.
        image_shape: (H, W, C) of one image.
        stats: training-split statistics for the input standardisation and output initialisers.
        sigma_head: None for a point estimate, or "softplus" / "log_sigma" to add a sigma output.
        augment: training-time flips/rotations (inactive at inference); None for none.
        seed: seed of the augmentation layers.
        calibrate_sigma: with a sigma head, end with a SigmaScale layer (1 until training sets it).
        calibrate_bias_bins: if set, a LogMassShift layer with that many knots in log exposure (one
            when the network does not take the exposure) shifts log mass (0 until training sets it).
    """
    images = keras.Input(shape=image_shape, name="images")
    redshift = keras.Input(shape=(1,), name="redshift")
    inputs = {"images": images, "redshift": redshift}
    mode = cfg.exposure_mode if cfg.use_exposure else None
    if mode is not None:
        inputs[EXPOSURE_INPUT] = keras.Input(shape=(1,), name=EXPOSURE_INPUT)

    x = images
    if augment is not None and (augment.flips or augment.rot90):
        x = RandomDihedral(flips=augment.flips, rot90=augment.rot90, seed=seed, name="dihedral")(x)
    if augment is not None and augment.rotation:
        x = keras.layers.RandomRotation(
            0.5, fill_mode="constant", interpolation="bilinear", seed=seed, name="rotation"
        )(x)
    if mode in ("rate", "both"):
        x = ExposureScale(stats.exposure_ref_s, name="exposure_scale")(x, inputs[EXPOSURE_INPUT])
    x = CountsTransform(cfg.input.transform, name="counts_transform")(x)
    if cfg.input.standardize:
        x = keras.layers.Normalization(
            axis=-1, mean=stats.channel_mean, variance=stats.channel_var, name="standardize"
        )(x)

    conv_reg = cfg.regularizer if cfg.regularizer.layers in ("conv", "both") else None
    for b, block in enumerate(cfg.layout()):
        block_in = x
        for i, filters in enumerate(block):
            # A residual block starts as its shortcut: the last conv (or its BN's scale) of the
            # branch starts at zero (Fixup; Goyal et al. 2017), so the sum does not double the
            # signal at every block (measured: docs/configs.md, "A wider model family").
            last = cfg.block == "residual" and i == len(block) - 1
            zero_conv = {"kernel_initializer": "zeros"} if last and not cfg.batch_norm else {}
            x = keras.layers.Conv2D(
                filters,
                cfg.kernel_size,
                padding=cfg.padding,
                name=f"conv{b}_{i}",
                **zero_conv,
                **_regularizers(conv_reg),
            )(x)
            if cfg.batch_norm:
                zero_bn = {"gamma_initializer": "zeros"} if last else {}
                x = keras.layers.BatchNormalization(name=f"bn{b}_{i}", **zero_bn)(x)
            if last:
                short = _shortcut(block_in, cfg, b, len(block), filters, conv_reg)
                x = keras.layers.Add(name=f"add{b}")([x, short])
            x = _activation(cfg.conv_activation, f"conv{b}_{i}_act")(x)
        if cfg.pool.type != "none" and cfg.pool.size > 1:
            pool = keras.layers.MaxPooling2D if cfg.pool.type == "max" else keras.layers.AveragePooling2D
            x = pool(cfg.pool.size, padding="same", name=f"pool{b}")(x)

    x = HEADS[cfg.head](name=HEAD_NAMES[cfg.head])(x)
    if cfg.use_redshift:
        z = keras.layers.Normalization(
            axis=-1, mean=[stats.redshift_mean], variance=[stats.redshift_std**2], name="z_scale"
        )(redshift)
        x = keras.layers.Concatenate(name="join_redshift")([x, z])
    if mode in ("head", "both"):
        t = LogExposure(stats.log_exposure_mean, stats.log_exposure_std, name="log_exposure")(
            inputs[EXPOSURE_INPUT])
        x = keras.layers.Concatenate(name="join_exposure")([x, t])

    dense_reg = cfg.regularizer if cfg.regularizer.layers in ("dense", "both") else None
    dropout_at = _dropout_positions(cfg)
    for i, units in enumerate(cfg.dense):
        x = keras.layers.Dense(units, name=f"dense{i}", **_regularizers(dense_reg))(x)
        x = _activation(cfg.dense_activation, f"dense{i}_act")(x)
        if i in dropout_at:
            x = keras.layers.Dropout(cfg.dropout.rate, seed=seed, name=f"dropout{i}")(x)

    # The report's initialisers: start at the training mean mass (and its spread, for sigma).
    mu = keras.layers.Dense(
        1,
        bias_initializer=keras.initializers.Constant(stats.label_mean),
        dtype="float32",
        name="mu",
    )(x)
    outputs = mu
    if sigma_head is not None:
        outputs = _sigma_output(x, mu, sigma_head, stats.label_std)
    if calibrate_bias_bins is not None:
        bins = calibrate_bias_bins if mode is not None else 1
        shift = LogMassShift(bins, dtype="float32", name=LOG_MASS_SHIFT)
        outputs = shift(outputs, inputs[EXPOSURE_INPUT]) if mode is not None else shift(outputs)
    if sigma_head is not None and calibrate_sigma:
        outputs = SigmaScale(dtype="float32", name=SIGMA_SCALE)(outputs)
    return keras.Model(inputs=inputs, outputs=outputs, name="xray_cluster_mass")


def _shortcut(x: Any, cfg: ModelConfig, b: int, layers: int, filters: int,
              reg: RegularizerConfig | None) -> Any:
    """Block `b`'s input as its residual branch's output: centre-cropped by the pixels its
    `layers` valid convs take off, then a 1x1 conv (and BN with batch_norm) where the channels
    change; the input itself otherwise."""
    if cfg.padding == "valid" and cfg.kernel_size > 1:
        lost = layers * (cfg.kernel_size - 1)
        crop = (lost // 2, lost - lost // 2)
        x = keras.layers.Cropping2D((crop, crop), name=f"shortcut{b}_crop")(x)
    if x.shape[-1] != filters:
        x = keras.layers.Conv2D(filters, 1, name=f"shortcut{b}", **_regularizers(reg))(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(name=f"shortcut{b}_bn")(x)
    return x


def _sigma_output(x: Any, mu: Any, kind: str, label_std: float) -> Any:
    if kind == "softplus":
        bias = math.log(math.expm1(label_std))  # softplus(bias) = label_std
        act = "softplus"
    elif kind == "log_sigma":
        bias = math.log(label_std)
        act = "exponential"
    else:
        raise ValueError(f"sigma_head must be 'softplus' or 'log_sigma', got {kind!r}")
    raw = keras.layers.Dense(
        1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3),
        bias_initializer=keras.initializers.Constant(bias),
        dtype="float32",
        name="sigma_raw",
    )(x)
    sigma = keras.layers.Activation(act, dtype="float32", name="sigma")(raw)
    return keras.layers.Concatenate(name="log_mass", dtype="float32")([mu, sigma])


def _dropout_positions(cfg: ModelConfig) -> set[int]:
    if cfg.dropout.placement == "none" or cfg.dropout.rate == 0 or not cfg.dense:
        return set()
    if cfg.dropout.placement == "every_dense":
        return set(range(len(cfg.dense)))
    return {cfg.dropout.index % len(cfg.dense)}


def _activation(cfg: ActivationConfig, name: str) -> keras.layers.Layer:
    if cfg.type == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=cfg.negative_slope, name=name)
    return keras.layers.Activation(cfg.type, name=name)


def _regularizers(cfg: RegularizerConfig | None) -> dict[str, Any]:
    if cfg is None or cfg.type == "none":
        return {}
    l1 = cfg.l1 if cfg.type in ("l1", "l1l2") else 0.0
    l2 = cfg.l2 if cfg.type in ("l2", "l1l2") else 0.0
    return {f"{cfg.target}_regularizer": keras.regularizers.L1L2(l1=l1, l2=l2)}
