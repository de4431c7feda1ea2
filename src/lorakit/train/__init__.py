"""Training: config schema, the Trainer loop, LoRA+ optimizer groups, schedules, checkpoints, callbacks, DDP."""

from lorakit.train.callbacks import Callback
from lorakit.train.config import RunConfig, load_config
from lorakit.train.trainer import Trainer, TrainingInterrupted

__all__ = ["Trainer", "TrainingInterrupted", "Callback", "RunConfig", "load_config", "train"]


def train(
    config,
    overrides: list[str] | None = None,
    *,
    resume=None,
    overwrite: bool = False,
    train_data=None,
    eval_data=None,
    callbacks: list[Callback] = (),
    progress: bool = True,
) -> dict:
    """Load the base, inject, read the data and train as ``config`` (a YAML path, dict or RunConfig) says.

    An output directory that already holds something is refused unless ``resume`` or ``overwrite``."""
    trainer = Trainer.from_config(
        config, overrides, train_data=train_data, eval_data=eval_data, callbacks=callbacks, progress=progress
    )
    return trainer.fit(resume=resume, overwrite=overwrite)
