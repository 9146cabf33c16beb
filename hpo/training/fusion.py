"""Which trials can train as one fused program (fused.py): the fusion key of a run config.

Two runs can share a program when their configs differ only in what a member sets for itself
there: its seed, learning rate and schedule numbers, dropout rate, L1/L2 strengths, AdamW's
weight decay (all vmapped arrays), and what is done per trial around the training (early
stopping, restore-best, TTA). Everything else shapes the traced program (the layers, the
variables' shapes, the optimizer's kind, the batch size, the loss and its phases, the epochs the
schedule spans) and is in the key. A setting that the chosen options leave unused (the L2
strength without a regularizer, AdamW's decay under Adam) is not.
"""

from __future__ import annotations

import json
from typing import Any

from hpo.config.tree import RunConfig

# Dotted paths a member sets for itself (fused.py makes them arrays) or that act per trial
# outside the program.
PER_MEMBER = (
    "train.seed", "train.optimizer.learning_rate", "train.optimizer.weight_decay",
    "train.schedule.final_learning_rate", "train.schedule.warmup_epochs",
    "model.dropout.rate", "model.regularizer.l1", "model.regularizer.l2",
    "train.early_stopping_patience", "train.restore_best_weights", "train.augment.tta",
    "train.jit_compile",
)


def fusion_key(cfg: RunConfig) -> str:
    """A string equal for two configs whose networks can train in one fused program."""
    tree: dict[str, Any] = cfg.model_dump(mode="json")
    model, train = tree["model"], tree["train"]
    # What the per-member numbers still decide about the program's structure.
    dropout = model["dropout"]
    keeps_dropout = dropout["placement"] != "none" and dropout["rate"] > 0 and bool(model["dense"])
    reg = model["regularizer"]
    structure = {
        "dropout": keeps_dropout,
        "l1": reg["type"] in ("l1", "l1l2") and reg["l1"] != 0,
        "l2": reg["type"] in ("l2", "l1l2") and reg["l2"] != 0,
        "warmup": train["schedule"]["type"] == "cosine" and train["schedule"]["warmup_epochs"] > 0,
    }
    for path in PER_MEMBER:
        *parents, leaf = path.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    if not keeps_dropout:
        model["dropout"] = None
    elif dropout["placement"] != "one_dense":
        dropout.pop("index", None)
    if reg["type"] == "none":
        model["regularizer"] = None
    if train["schedule"]["type"] == "constant":
        train["schedule"] = "constant"
    if train["optimizer"]["type"] in ("adam", "adamw"):
        train["optimizer"].pop("momentum", None)
        train["optimizer"].pop("nesterov", None)
    if train["loss"]["type"] == "mse":
        train["loss"] = "mse"
    if model["filters"] is not None or model["width"] != 1.0:  # the layout the builder makes
        model["conv_blocks"], model["filters"], model["width"] = cfg.model.layout(), None, 1.0
    return json.dumps({**tree, "structure": structure}, sort_keys=True)


def shape_key(cfg: RunConfig) -> str:
    """The shapes of a config's network variables alone (conv layout, kernel, dense layers, batch
    norm, the sigma head, the inputs): equal for networks that padding or masking could fuse
    regardless of their other settings."""
    m = cfg.model
    pool = m.pool.size if m.pool.type != "none" else 1
    return json.dumps([m.layout(), m.kernel_size, m.padding, pool, m.dense, m.batch_norm, m.block,
                       m.head, m.use_redshift, m.use_exposure and m.exposure_mode,
                       cfg.train.loss.type])
