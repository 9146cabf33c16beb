"""hpo: hyperparameter optimisation of a Keras CNN that measures galaxy-cluster masses."""

__version__ = "0.1.0"
