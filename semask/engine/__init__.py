"""Training, evaluation and inference machinery built on the models and the data package."""
