"""Experiment tracking: training runs recorded in a tracker (MLflow) as well as in their directories.

The run directory stays the record that mtrec itself reads; a tracker is a second, searchable
view of it for people who compare runs in MLflow's UI. A tracked training run holds:

parameters
    config.json flattened (``model.embedding_dim``, ``data.split.method``...; see
    :func:`mtrec.config.flatten`), each value as JSON text (``[96, 64]``, ``null``, ``false``).
    The settings are logged with the first epoch (a training refused before it leaves no run in
    the tracker), what the run resolved and what the split gave (``resolved.*``,
    ``data_summary.*``) once it is published.
metrics, one step per epoch
    Every value of the epoch's record in metrics.json (each task's ``train_<task>``:
    ``train_watch``, ``train_rating``; ``train_loss``, ``learning_rate``, ``seconds``,
    ``valid_<metric>``, ``test_<metric>``, and ``weight_<task>`` for learned weightings), at step = epoch, as each epoch ends
    (the epochs before a resumed checkpoint once the run is published). MLflow names allow no
    ``@``, so ``test_ndcg@10`` is ``test_ndcg_at_10``.
the summary
    ``selected_epoch`` and ``selected_<metric>`` for every metric of the epoch whose weights the
    model keeps (metrics.json's ``selected``), and ``selection_score`` when it was chosen on
    validation; the tag ``mtrec.selection_criterion`` names the criterion.
artifacts
    The published run directory's files: config.json, metrics.json, model.safetensors and the
    TensorBoard events.
tags
    ``mtrec.run_dir``: the run directory's absolute path.
status
    ``FINISHED``; ``KILLED`` on Ctrl-C; ``FAILED`` when training fails.

``mtrec experiments`` records each run it trains as a run nested under one run for the
experiment, and ``mtrec tune`` each trial under one run for the study (a pruned trial ends
``KILLED``, tagged ``mtrec.stopped``); the study's run gets each finished trial's value as
``trial_value`` at step = trial number, then ``best_value``, ``best_trial`` and the best
config.json as an artifact.

Where runs go
-------------
The tracking URI is ``tracking_uri`` (``--tracking-uri``), else ``$MLFLOW_TRACKING_URI``, else
a local SQLite store under the run root: ``ROOT/.mlflow/mlflow.db``, its artifacts in
``ROOT/.mlflow/mlartifacts`` (``mlflow ui --backend-store-uri sqlite:///ROOT/.mlflow/mlflow.db``
shows it). A new experiment in any ``sqlite:///PATH`` store keeps its artifacts beside the
database, in ``mlartifacts/``. The MLflow experiment is ``$MLFLOW_EXPERIMENT_NAME``, else
``mtrec``.

Failures
--------
:func:`connect` reaches the store before any training, with a bounded wait (no retries, a
:data:`CHECK_TIMEOUT` second timeout): a store that cannot be reached, or a URI MLflow cannot
use, is a :class:`~mtrec.errors.ConfigError` in one line. Should the store fail later, in the
middle of training, tracking that run stops with one warning and training goes on: the run
directory still records everything.

In a distributed run only process 0 connects and logs.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from mtrec.config import RunConfig, flatten
from mtrec.errors import ConfigError, MtrecError
from mtrec.io.fitted import EpochRecord
from mtrec.runs import read_config, read_metrics, run_directory
from mtrec.train.distributed import Distributed

#: The folder under the run root that holds the default local store.
LOCAL_STORE_DIRNAME = ".mlflow"
#: The MLflow experiment runs go to when ``$MLFLOW_EXPERIMENT_NAME`` names none.
DEFAULT_EXPERIMENT = "mtrec"
#: Seconds :func:`connect` waits for a tracking server to answer.
CHECK_TIMEOUT = 5
#: How a tracked run ended (MLflow's names).
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
#: Most parameters or metrics sent in one request (MLflow's limit for parameters is 100).
BATCH = 100

EpochCallback = Callable[[EpochRecord], None]


class Tracker(abc.ABC):
    """Where runs are recorded besides their directories: the few calls mtrec makes of a tracker.

    A run is named by the id :meth:`start_run` returns. :class:`TrackedRun` and the functions of
    this module build mtrec's record (parameters, epochs, summary, artifacts) from these calls.
    """

    #: Where the runs go, as the user would give it again (a URI).
    uri: str

    @abc.abstractmethod
    def start_run(self, name: str, parent: str | None = None) -> str:
        """Start a run called ``name`` (nested under run ``parent`` if given); its id."""

    @abc.abstractmethod
    def log_params(self, run: str, params: dict[str, str]) -> None:
        """Record parameters of ``run`` (each once)."""

    @abc.abstractmethod
    def log_metrics(self, run: str, metrics: dict[str, float], step: int) -> None:
        """Record values of ``run`` at ``step``."""

    @abc.abstractmethod
    def set_tags(self, run: str, tags: dict[str, str]) -> None:
        """Tag ``run``."""

    @abc.abstractmethod
    def log_artifacts(self, run: str, folder: Path) -> None:
        """Copy the files of ``folder`` into ``run``'s artifacts."""

    @abc.abstractmethod
    def end_run(self, run: str, status: str) -> None:
        """End ``run`` as ``FINISHED``, ``FAILED`` or ``KILLED``."""


class MlflowTracker(Tracker):
    """Runs recorded in an MLflow tracking store (a server, or a local SQLite database).

    Use :meth:`connect` (or :func:`connect`), which checks that the store can be reached.

    Parameters
    ----------
    client:
        An ``mlflow.MlflowClient`` of the store.
    experiment_id:
        The MLflow experiment the runs go to.
    uri:
        The tracking URI.
    """

    def __init__(self, client: Any, experiment_id: str, uri: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.uri = uri

    @classmethod
    def connect(cls, uri: str, experiment: str = DEFAULT_EXPERIMENT) -> MlflowTracker:
        """A tracker of the store at ``uri``, its ``experiment`` found or created; a store that
        cannot be reached within :data:`CHECK_TIMEOUT` seconds, or a URI that MLflow cannot use,
        is a :class:`ConfigError` in one line."""
        mlflow = _mlflow()
        with _bounded_requests():
            try:
                client = mlflow.MlflowClient(tracking_uri=uri)
                experiment_id = _experiment_id(client, experiment, _artifact_location(uri))
            except Exception as error:  # noqa: BLE001  (every store and transport has its own errors)
                raise ConfigError(_unreachable(uri, error)) from None
        return cls(client, experiment_id, uri)

    @classmethod
    def for_root(cls, uri: str | None, root: str | Path) -> MlflowTracker:
        """:meth:`connect` to ``uri``, else ``$MLFLOW_TRACKING_URI``, else the local store of the run
        root ``root`` (:func:`default_uri`); the experiment is ``$MLFLOW_EXPERIMENT_NAME``, else ``mtrec``."""
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root)
        return cls.connect(uri, os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)

    def start_run(self, name: str, parent: str | None = None) -> str:
        tags = {"mlflow.parentRunId": parent} if parent else {}
        return self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id

    def log_params(self, run: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(entries), BATCH):
            self.client.log_batch(run, params=entries[start : start + BATCH])

    def log_metrics(self, run: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, value, now, step) for key, value in metrics.items()]
        for start in range(0, len(entries), BATCH):
            self.client.log_batch(run, metrics=entries[start : start + BATCH])

    def set_tags(self, run: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run, tags=[RunTag(key, value) for key, value in tags.items()])

    def log_artifacts(self, run: str, folder: Path) -> None:
        self.client.log_artifacts(run, str(folder))

    def end_run(self, run: str, status: str) -> None:
        self.client.set_terminated(run, status)


class NoTracker(Tracker):
    """Records nothing: what :func:`tracked` records in when there is no tracker."""

    uri = ""

    def start_run(self, name: str, parent: str | None = None) -> str:
        return ""

    def log_params(self, run: str, params: dict[str, str]) -> None:
        pass

    def log_metrics(self, run: str, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, run: str, tags: dict[str, str]) -> None:
        pass

    def log_artifacts(self, run: str, folder: Path) -> None:
        pass

    def end_run(self, run: str, status: str) -> None:
        pass


#: The trackers by name: each opens itself for a tracking URI (None: its default) and a run root.
TRACKERS: dict[str, Callable[[str | None, str | Path], Tracker]] = {"mlflow": MlflowTracker.for_root}


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise ConfigError('--tracker mlflow needs MLflow: pip install "mtrec[mlflow]"') from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines as it creates its tables
    return mlflow


@contextlib.contextmanager
def _bounded_requests() -> Iterator[None]:
    """For the block, MLflow's HTTP requests are tried once, with a short timeout."""
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT)}
    saved = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name`` in the store, created (or restored, if deleted) as needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a local SQLite database, else the store's default."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path.startswith("/") or parsed.path == "/:memory:":
        return None
    database = Path(parsed.path[1:])  # sqlite:///relative and sqlite:////absolute
    return (database.resolve().parent / "mlartifacts").as_uri()


def _unreachable(uri: str, error: Exception) -> str:
    """One line saying why the store at ``uri`` cannot be used."""
    text = str(error)
    if "unsupported URI" in text or "Unexpected URI scheme" in text:
        scheme = urlparse(uri).scheme or "none"
        return (
            f"MLflow cannot use the tracking URI {uri!r} (scheme {scheme!r}): give http(s)://HOST:PORT of a "
            "tracking server, sqlite:///PATH, or another store MLflow supports"
        )
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    reason = errno.group(1).strip() if errno else (text.strip().splitlines() or [type(error).__name__])[0][:300]
    return f"the MLflow tracking store {uri} cannot be reached ({reason}): start it, or give another --tracking-uri (or MLFLOW_TRACKING_URI)"


def default_uri(root: str | Path) -> str:
    """The local SQLite store under the run root ``root``: ``ROOT/.mlflow/mlflow.db``."""
    return f"sqlite:///{Path(root).resolve() / LOCAL_STORE_DIRNAME / 'mlflow.db'}"


def connect(tracker: str | None, uri: str | None, root: str | Path, distributed: Distributed | None = None) -> Tracker | None:
    """The tracker to record runs under ``root`` in, checked before any training; None for no tracking.

    Parameters
    ----------
    tracker:
        A name in :data:`TRACKERS` (``"mlflow"``), or None for no tracking.
    uri:
        The tracking URI; None: the tracker's default (for MLflow ``$MLFLOW_TRACKING_URI``, else
        :func:`default_uri` of ``root``).
    root:
        The folder of the runs (a run directory's parent, an experiment's or a search's root).
    distributed:
        In a distributed run only process 0 connects (the others get None); a refusal is raised
        on every process.

    Raises
    ------
    ConfigError
        An unknown tracker, a URI without a tracker, MLflow not installed, or a store that cannot be
        reached (see :meth:`MlflowTracker.connect`).
    """
    found, refusal = None, None
    if distributed is None or distributed.is_main:
        try:
            found = _connect(tracker, uri, root)
        except MtrecError as error:
            refusal = error
    if distributed is not None:
        refusal = distributed.broadcast(refusal)
    if refusal is not None:
        raise refusal
    return found


def _connect(tracker: str | None, uri: str | None, root: str | Path) -> Tracker | None:
    if tracker is None:
        if uri is not None:
            raise ConfigError("--tracking-uri says where a tracker records runs: give --tracker mlflow too")
        return None
    if tracker not in TRACKERS:
        raise ConfigError(f"unknown tracker {tracker!r}; use one of {', '.join(TRACKERS)}")
    return TRACKERS[tracker](uri, root)


# ---------------------------------------------------------------------------------------------
# What mtrec records


def metric_key(name: str) -> str:
    """A metrics.json name as a tracker's metric name: ``test_ndcg@10`` is ``test_ndcg_at_10``."""
    return name.replace("@", "_at_")


def param_value(value: Any) -> str:
    """A setting as parameter text: strings as they are, anything else as JSON (``[96, 64]``, ``null``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of ``values`` as metrics (keys made valid and prefixed); None and flags left out."""
    return {
        metric_key(f"{prefix}{key}"): float(value) for key, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class TrackedRun:
    """One run in a tracker, with mtrec's record of a training run built on the tracker's calls.

    The run starts with :meth:`start`. A failure of the tracker after that stops the run's
    tracking with one warning (the run directory still records everything) instead of ending
    the training.

    Parameters
    ----------
    tracker:
        Where the run goes.
    name:
        The run's name.
    parent:
        The run it is nested under, if any.
    """

    def __init__(self, tracker: Tracker, name: str, parent: TrackedRun | None = None) -> None:
        self.tracker = tracker
        self.name = name
        self.parent = parent
        self.id: str | None = None
        self.params: dict[str, str] = {}
        self.epochs: set[int] = set()
        self.ended = False
        self.broken = False

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        if self.broken:
            return None
        try:
            return method(*args)
        except Exception as error:  # noqa: BLE001  (a tracker's failure must not end a training)
            self.broken = True
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            warnings.warn(
                f"tracking run {self.name} in {self.tracker.uri} stopped ({reason}); the run directory still records everything", stacklevel=3
            )
            return None

    def start(self) -> TrackedRun:
        """Start the run in the tracker (nested under :attr:`parent`); returns itself."""
        parent = self.parent.id if self.parent is not None else None
        self.id = self._call(self.tracker.start_run, self.name, parent)
        return self

    def log_params(self, params: dict[str, Any]) -> None:
        """Record the parameters not recorded yet (a tracker keeps one value per parameter)."""
        new = {key: param_value(value) for key, value in params.items() if key not in self.params}
        if new:
            self._call(self.tracker.log_params, self.id, new)
            self.params.update(new)

    def log_config(self, document: dict[str, Any]) -> None:
        """Record a config.json document, flattened, as parameters."""
        self.log_params(flatten(document))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call(self.tracker.log_metrics, self.id, metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call(self.tracker.set_tags, self.id, tags)

    def log_artifacts(self, folder: str | Path) -> None:
        self._call(self.tracker.log_artifacts, self.id, Path(folder))

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Record one epoch (its metrics.json record) at step = its number, once."""
        if record["epoch"] not in self.epochs:
            self.epochs.add(record["epoch"])
            self.log_metrics(_numbers({k: v for k, v in record.items() if k != "epoch"}), record["epoch"])

    def log_run_directory(self, run_dir: str | Path) -> None:
        """Record a finished run: config.json as parameters, the epochs not recorded yet (those
        before a resumed checkpoint), metrics.json's selected epoch as the summary, and the
        directory's files as artifacts."""
        run_dir = Path(run_dir)
        self.log_config(read_config(run_dir))
        metrics = read_metrics(run_dir)
        for record in metrics["epochs"]:
            self.log_epoch(record)
        selected, selection = metrics.get("selected", {}), metrics.get("selection", {})
        if "epoch" in selected:
            summary = _numbers(selected, "selected_")
            if isinstance(selection.get("score"), (int, float)):
                summary["selection_score"] = float(selection["score"])
            self.log_metrics(summary, selected["epoch"])
        tags = {"mtrec.run_dir": str(run_dir.resolve())}
        if "criterion" in selection:
            tags["mtrec.selection_criterion"] = str(selection["criterion"])
        self.set_tags(tags)
        self.log_artifacts(run_dir)

    def end(self, status: str) -> None:
        """End the run (once) as ``FINISHED``, ``FAILED`` or ``KILLED``."""
        if not self.ended:
            self.ended = True
            self._call(self.tracker.end_run, self.id, status)


@contextlib.contextmanager
def _ending(run: TrackedRun, stopped: tuple[type[BaseException], ...]) -> Iterator[None]:
    """End ``run`` as the block ends: ``FINISHED``, ``KILLED`` on Ctrl-C or one of the ``stopped``
    exceptions (tagged ``mtrec.stopped`` with its message), ``FAILED`` on any other error."""
    status = FAILED
    try:
        yield
        status = FINISHED
    except (KeyboardInterrupt, *stopped) as error:
        status = KILLED
        if str(error):
            run.set_tags({"mtrec.stopped": str(error)})
        raise
    finally:
        run.end(status)


@contextlib.contextmanager
def tracked(tracker: Tracker | None, name: str, parent: TrackedRun | None = None) -> Iterator[TrackedRun]:
    """A run of ``tracker`` (None: :class:`NoTracker`, which records nothing) for the block, nested
    under ``parent``; it ends as the block does (``FINISHED``, ``KILLED`` on Ctrl-C, else ``FAILED``)."""
    run = TrackedRun(tracker or NoTracker(), name, parent).start()
    with _ending(run, ()):
        yield run


@contextlib.contextmanager
def tracked_training(
    tracker: Tracker | None,
    config: RunConfig,
    logdir: str | Path,
    callback: EpochCallback | None = None,
    *,
    name: str | None = None,
    parent: TrackedRun | None = None,
    stopped: tuple[type[BaseException], ...] = (),
) -> Iterator[EpochCallback | None]:
    """The epoch callback to give :func:`mtrec.runs.train_run` for ``logdir``, tracked.

    The run of ``tracker`` (named ``name``, default ``logdir``; nested under ``parent``) starts
    with the first epoch, so a training refused before it (a finished run without ``force``,
    say) leaves no run in the tracker. It records ``config``'s settings and every epoch (then
    ``callback`` is called); when the block ends, the published run directory
    (:meth:`TrackedRun.log_run_directory`). It ends ``KILLED`` on Ctrl-C or one of the
    ``stopped`` exceptions, ``FAILED`` on any other. With no tracker, the callback is
    ``callback`` and nothing is recorded.

    Examples
    --------
    >>> with tracked_training(tracker, config, "run/a", on_epoch) as callback:  # doctest: +SKIP
    ...     train_run(config, train, validation, test, "run/a", callbacks=[callback])
    """
    if tracker is None:
        yield callback
        return
    run = TrackedRun(tracker, name or str(logdir), parent)

    def begin() -> None:
        if run.id is None and not run.broken:
            run.start().log_config(config.to_json())

    def on_epoch(record: EpochRecord) -> None:
        begin()
        run.log_epoch(record.to_json())
        if callback is not None:
            callback(record)

    try:
        yield on_epoch
    except BaseException:
        if run.id is None:  # refused before its first epoch: nothing to record
            raise
        with _ending(run, stopped):
            raise
    begin()  # a run resumed after its last epoch had none to start it
    with _ending(run, stopped):
        run.log_run_directory(run_directory(logdir))
