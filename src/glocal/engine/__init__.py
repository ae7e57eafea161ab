"""Training, evaluation and checkpointing, written once against the model contract.

``train(TrainConfig) -> TrainResult`` runs a whole job (single process or under ``torchrun``);
``evaluate(...) -> EvalResult`` measures a model on a dataset.
"""

from glocal.engine.checkpoint import load_model_weights, load_train_state
from glocal.engine.config import TrainConfig, load_recipe
from glocal.engine.evaluate import EvalResult, eval_view, evaluate, save_confusion_png
from glocal.engine.trainer import Callback, TrainResult, build_model, train

__all__ = [
    "Callback",
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "eval_view",
    "evaluate",
    "load_model_weights",
    "load_recipe",
    "load_train_state",
    "save_confusion_png",
    "train",
]
