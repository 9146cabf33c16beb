"""The code a saved model carries: its custom Keras layers, its input handling, its pyfunc wrapper.

    mlflow.pyfunc.load_model("models:/xray-cluster-mass@champion")   # runs entry.py, then pyfunc.py

Self-contained: Keras, NumPy, pandas and MLflow's pyfunc, nothing else of hpo, because every
logged model carries a copy of this package as its code (code/xray_hpo_inference), and plain
MLflow loads it from there in a process where hpo is not installed. Its files import each other
relatively, so the copy works under its own name; this file imports nothing, so that hpo.model
can use the layers without reaching MLflow.

Today's package loads every model logged before it: keep the layers' configs and the inputs
backward compatible.
"""

CODE_NAME = "xray_hpo_inference"  # the name of this package's copy inside a logged model
