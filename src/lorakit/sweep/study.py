"""The Optuna study behind a sweep: its database, sampler and pruner, and the loop every worker runs.

The study lives in Optuna's RDB storage (a SQLite file by default, PostgreSQL for workers on many machines).
Every worker runs the same loop: fail stale trials, take the next trial under the study's claim lock, run it
with a heartbeat, tell the result. The claim lock (``flock`` beside a SQLite file, ``pg_advisory_lock`` on
PostgreSQL) makes "is the budget spent? if not, ask for a trial" one atomic step, so N workers start exactly
``budget.trials`` trials between them; Optuna's storage makes sure no two workers hold the same trial.

A trial whose worker died stops beating; after ``heartbeat.grace`` seconds the next worker to look (or
``--resume``) marks it failed and Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues
the same parameters again as a waiting trial, which the next free worker runs. The budget counts every trial
except a failed one that was queued again, so a re-run does not cost a second slot. A worker whose budget is
spent waits while other trials still run (taking one over if its worker dies) and returns when none is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from lorakit.core.errors import ConfigError, LorakitError
from lorakit.sweep.spec import SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_RETRY = 3


def open_storage(spec: SweepSpec) -> RDBStorage:
    """Optuna's RDB storage at ``spec.storage`` with the heartbeat and the retry of stale trials switched on."""
    url = make_url(spec.storage)
    kwargs = {"connect_args": {"timeout": 60}} if url.get_backend_name() == "sqlite" else {}
    try:
        with _stable():
            return RDBStorage(
                spec.storage,
                engine_kwargs=kwargs,
                heartbeat_interval=spec.heartbeat["interval"],
                grace_period=spec.heartbeat["grace"],
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
    except Exception as err:  # the driver's own errors (unreachable server, bad credentials, missing driver)
        raise ConfigError(
            f"storage {url.render_as_string(hide_password=True)} could not be opened: {str(err).splitlines()[0]}"
        ) from None


def sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``spec.sampler`` names, seeded. The grid is run from the queue (see :func:`open_study`),
    so its sampler only ever replays queued parameters."""
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed)
    return optuna.samplers.RandomSampler(seed=spec.seed)


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner is None or len(spec.objectives) > 1:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.pruner["startup_trials"], n_warmup_steps=spec.pruner["warmup_steps"]
    )


@contextlib.contextmanager
def claim_lock(url: str, name: str) -> Iterator[None]:
    """Serialise the claims (and the creation) of study ``name`` across processes and machines sharing ``url``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        with open(f"{parsed.database}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    key = int.from_bytes(hashlib.sha256(f"lorakit-sweep:{name}".encode()).digest()[:8], "big", signed=True)
    try:
        connection = _lock_engine(url).connect()
    except (ImportError, SQLAlchemyError) as err:
        hint = "; install lorakit[postgres] for the psycopg driver" if isinstance(err, ImportError) else ""
        raise ConfigError(
            f"storage {parsed.render_as_string(hide_password=True)} could not be opened: "
            f"{str(err).splitlines()[0]}{hint}"
        ) from None
    with connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


@functools.cache
def _lock_engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)


def open_study(spec: SweepSpec, *, mode: str) -> tuple[optuna.Study, RDBStorage]:
    """Open the storage and create or load the study. ``mode``: ``new`` (refuse a study that already has trials),
    ``resume`` (it must exist) or ``worker`` (join it, creating it if no one has yet). A new grid study queues
    every grid point. Workers starting together are serialised, the storage's first table creation included."""
    directions = spec.directions
    with claim_lock(spec.storage, spec.name):
        storage = open_storage(spec)
        exists = spec.name in {s.study_name for s in storage.get_all_studies()}
        if mode == "resume" and not exists:
            raise ConfigError(f"no study {spec.name!r} in {_shown(storage)} to resume; start it without --resume")
        study = optuna.create_study(
            storage=storage,
            study_name=spec.name,
            directions=directions,
            sampler=sampler(spec),
            pruner=pruner(spec),
            load_if_exists=True,
        )
        if exists:
            if [d.name.lower() for d in study.directions] != directions:
                raise ConfigError(
                    f"study {spec.name!r} in {_shown(storage)} has other objectives; give the sweep another "
                    "name or storage"
                )
            if mode == "new" and study.get_trials(deepcopy=False):
                raise ConfigError(
                    f"study {spec.name!r} in {_shown(storage)} already has trials: continue it with "
                    "--resume, join it with --worker, or give the sweep another name"
                )
        else:
            study.set_user_attr("objectives", spec.objectives)
            if spec.sampler == "grid":
                for params in spec.space.grid():
                    study.enqueue_trial(params)
    return study, storage


@contextlib.contextmanager
def _stable() -> Iterator[None]:
    """Silence Optuna's notice that heartbeats and retries are experimental (they have been since 2.8/2.9)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def retry_history(trial: FrozenTrial) -> list[int]:
    """Numbers of the failed trials this one re-runs, oldest first (empty for a first run)."""
    with _stable():
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against the budget: every trial taken by a worker, except failed ones queued again."""
    requeued = {n for t in trials for n in retry_history(t)}
    return sum(
        1 for t in trials if t.state != TrialState.WAITING and not (t.state == TrialState.FAIL and t.number in requeued)
    )


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every ``heartbeat_interval`` seconds from a thread while the block runs."""
    stop = threading.Event()
    trial_id = trial._trial_id  # Optuna's storage key of the trial (the ask-and-tell API exposes no other)

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(storage.get_heartbeat_interval()):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def claim(study: optuna.Study, storage: RDBStorage, spec: SweepSpec) -> optuna.Trial | None:
    """The next trial to run (a queued one first), or ``None`` when the budget is spent."""
    with _stable():
        optuna.storages.fail_stale_trials(study)
    with claim_lock(spec.storage, spec.name):
        if spec.trials is not None and budget_used(study.get_trials(deepcopy=False)) >= spec.trials:
            return None
        with warnings.catch_warnings():  # Optuna notes that its own loop usually drives the heartbeat; ours does
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            return study.ask()  # a queued trial (a re-run, a grid point) first, else the sampler's next


def work(
    spec: SweepSpec,
    study: optuna.Study,
    storage: RDBStorage,
    run: Callable[[optuna.Trial], list[float]],
    *,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] = lambda s, t: None,
) -> None:
    """The worker loop: claim, run with a heartbeat, tell; until the budget is spent and no trial is left running.

    ``run`` returns the objective values. :class:`optuna.TrialPruned` marks the trial pruned; a
    :class:`LorakitError` or ``RuntimeError`` (diverged training, out of memory) marks it failed with the message in
    ``user_attrs["error"]``; Ctrl-C/SIGTERM fails it, queues it again and re-raises. ``budget.minutes`` stops new
    claims after that long.
    """
    deadline = time.monotonic() + spec.minutes * 60 if spec.minutes is not None else None
    while deadline is None or time.monotonic() < deadline:
        trial = claim(study, storage, spec)
        if trial is None:
            if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
                time.sleep(spec.heartbeat["interval"])
                continue
            return
        with heartbeat(storage, trial):
            try:
                values = run(trial)
            except optuna.TrialPruned as pruned:
                trial.set_user_attr("pruned", str(pruned))
                study.tell(trial, state=TrialState.PRUNED)
            except (LorakitError, RuntimeError) as err:  # diverged, out of memory: this trial's settings failed
                trial.set_user_attr("error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                study.tell(trial, state=TrialState.FAIL)
            except BaseException:
                frozen = study.tell(trial, state=TrialState.FAIL)
                with _stable():
                    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)
                raise
            else:
                study.tell(trial, values)
        gc.collect()  # the trial's model and optimizer state go before the next trial loads its own
        on_trial(study, study._storage.get_trial(trial._trial_id))


def _shown(storage: RDBStorage) -> str:
    return make_url(storage.url).render_as_string(hide_password=True)
