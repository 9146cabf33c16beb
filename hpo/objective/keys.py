"""Names of the user attributes a trial carries, importable without TensorFlow or MLflow."""

EPOCHS_RUN_KEY = "epochs_run"  # epochs trained, pruned trials included
FAIL_REASON_KEY = "fail_reason"  # why a trial failed, in one line
CONFIG_KEY = "config"  # the trial's resolved RunConfig as JSON
MLFLOW_RUN_ID_KEY = "mlflow_run_id"  # the trial's MLflow run
MODEL_URI_KEY = "mlflow_model_uri"  # where its logged model lives
WORKER_KEY = "worker"  # host:pid of the worker process that ran the trial
VAL_METRICS_KEY = "val_metrics"  # the final validation metrics of a COMPLETE trial, {name: value}
