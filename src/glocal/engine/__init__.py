"""Training, evaluation and checkpointing, written once against the model contract.

``train(TrainConfig) -> TrainResult`` runs a whole job (single process or under ``torchrun``);
``evaluate(...) -> EvalResult`` measures a model on a dataset; ``restore_model(checkpoint)`` rebuilds a trained
model for evaluation and prediction. Importing ``glocal.engine.inference`` or ``glocal.engine.evaluate`` does not
import the trainer.
"""

from glocal.engine.checkpoint import load_train_state
from glocal.engine.config import TrainConfig, load_recipe
from glocal.engine.evaluate import EvalResult, evaluate, save_confusion_png, save_curves_png
from glocal.engine.inference import Restored, predict, restore_model
from glocal.engine.progress import Callback

_TRAINER = ("TrainResult", "TrainingDiverged", "train")


def __getattr__(name: str):
    """The trainer's names, imported on first use (evaluation and prediction never load the training code)."""
    if name in _TRAINER:
        from glocal.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'glocal.engine' has no attribute {name!r}")


__all__ = [
    "Callback",
    "EvalResult",
    "Restored",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "load_recipe",
    "load_train_state",
    "predict",
    "restore_model",
    "save_confusion_png",
    "save_curves_png",
    "train",
]
