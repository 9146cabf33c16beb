"""hpo: hyperparameter optimisation of a Keras CNN that measures galaxy-cluster masses."""

import os

# TensorFlow's C++ start-up chatter buries our one-line messages; users can still set their own.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
