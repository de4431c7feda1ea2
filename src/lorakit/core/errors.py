"""Typed errors. Every failure a user can cause raises a subclass of :class:`LorakitError`.

Messages say what was wrong, where (file, line, key, layer, shape) and what to do about it.
The CLI prints ``str(error)`` on one line to stderr and exits with code 2.
"""


class LorakitError(Exception):
    """Base class of every error lorakit raises on bad input."""


class ConfigError(LorakitError, ValueError):
    """A configuration value (LoraConfig, YAML, CLI option) is invalid."""


class TargetNotFoundError(ConfigError):
    """``targets`` matched no module of the model."""


class AdapterFileError(LorakitError):
    """An adapter directory is missing, unreadable, truncated or malformed."""


class AdapterMismatchError(LorakitError):
    """An adapter does not fit the model: missing or unexpected keys, or wrong shapes."""


class BaseMismatchError(AdapterMismatchError):
    """An adapter was trained on another base model (fingerprints differ)."""


class AdapterStateError(LorakitError):
    """An operation does not fit the adapter's state (merge twice, unknown name, ...)."""


class MergeError(LorakitError):
    """A merge would write NaN/inf or is otherwise unsafe."""


class ModelLoadError(LorakitError):
    """A base model could not be found or loaded."""


class DataError(LorakitError):
    """A dataset file or row is invalid."""


class TrainingError(LorakitError):
    """A training run cannot go on (e.g. its loss became NaN/inf); the last good checkpoint is kept."""


class RegistryError(LorakitError):
    """The adapter registry cannot be opened, is from a newer lorakit, or was asked about something it does not hold."""


class OutputExistsError(ConfigError):
    """An output path already holds something and overwriting was not asked for."""
