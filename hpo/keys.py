"""Names a study, its trials and their runs are read by: attribute keys and the metric names.

Importable without TensorFlow, Optuna or MLflow; every other module imports them from here.
"""

# The metric a study minimises (study.metric) and the training monitors by default, and the
# residual metric of the validation split each one names.
METRIC = "val_residual_std"
METRICS = {"val_residual_std": "residual_std", "val_rmse": "rmse", "val_nll": "nll"}

# Trial user attributes.
EPOCHS_RUN_KEY = "epochs_run"  # epochs trained, pruned trials included
FAIL_REASON_KEY = "fail_reason"  # why a trial failed, in one line
CONFIG_KEY = "config"  # the trial's resolved RunConfig as JSON
MLFLOW_RUN_ID_KEY = "mlflow_run_id"  # the trial's MLflow run
MODEL_URI_KEY = "mlflow_model_uri"  # where its logged model lives
WORKER_KEY = "worker"  # host:pid of the worker process that ran the trial
VAL_METRICS_KEY = "val_metrics"  # the final validation metrics of a COMPLETE trial, {name: value}
BEST_EPOCH_KEY = "best_epoch"  # 0-based epoch of the best monitored value
RESUMED_KEY = "resumed"  # {"trial": n, "run": id, "epoch": e}: the checkpoint a trial went on from

# Tags of a trial's MLflow run that resumed another's checkpoint.
RESUMES_RUN_TAG = "hpo.resumes_run"  # the run that wrote the checkpoint
FUSED_TAG = "hpo.fused"  # trials trained in one program with this one (study.fuse)
RESUMED_AT_TAG = "hpo.resumed_at_epoch"  # epochs it had trained (logged again in this run)

# The reason shown for a trial failed without one: a peer or the proxy failed it as lost.
LOST_WORKER_REASON = "worker lost (no heartbeat)"

# Trial system attribute.
BEAT_KEY = "hpo:heartbeat"  # the wall time of a gRPC worker's last beat

# Study user attributes.
SPACE_KEY = "hpo_space"  # the search space, as validated JSON
TRACKING_URI_KEY = "mlflow_tracking_uri"  # the MLflow store (its password masked)
DATA_FINGERPRINT_KEY = "data_sha256"  # the data file's fingerprint at launch
MLFLOW_PARENT_RUN_KEY = "mlflow_parent_run_id"  # the study's parent run
MLFLOW_EXPERIMENT_KEY = "mlflow_experiment_id"  # the study's experiment
