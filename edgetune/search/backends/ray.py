"""The Ray backend: Ray Tune runs a job's trials, on a local Ray or an existing cluster.

This module imports Ray; the worker imports it only for a job on the ray backend, and
submission refuses such a job where Ray is not installed.

The job's study stays the source of truth. `StudySearcher` is a Ray Tune searcher that asks the
study for each trial's parameters (with the sampler the spec names, so grid, TPE, the RL
controller... work here too) and tells it the result, so the API, the Pareto ranking and the
Optuna dashboard see Ray's trials like any other. Ray Tune's own schedulers (ASHA, HyperBand,
PBT) stop, pause or restart trials from the epochs each trial reports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.search import Searcher

from edgetune.devices import MeasureConfig
from edgetune.search.device_latency import PROBE_TIMEOUT_S
from edgetune.search.registry import PRUNERS, AlgorithmContext, progress_metric
from edgetune.search.study import (
    JobControl,
    JobOutcome,
    JobStudy,
    OutcomeState,
    ResolvedJob,
    TrialOutcome,
    run_trial,
)
from edgetune.settings import DataLayout
from edgetune.spaces import ParamValue
from edgetune.spec import JobSpec
from edgetune.storage import Job, JobStatus, utcnow

logger = logging.getLogger(__name__)

#: A trial's last report carries its outcome as JSON under this key; earlier ones carry epochs.
RESULT_KEY = "edgetune_result"


@dataclass(frozen=True)
class RayTrialTask:
    """What every trial of one job needs; plain data, shipped once to Ray's workers."""

    job: ResolvedJob
    layout: DataLayout
    latency: MeasureConfig
    #: Save the trainer's checkpoint with every report (schedulers that pause or clone trials).
    checkpoints: bool
    storage_url: str
    probe_timeout_s: float


def run_ray_trial(config: dict[str, Any], task: RayTrialTask) -> None:
    """The function Ray Tune runs per trial, in a Ray worker: train, export, measure.

    Epochs before the last are reported as they end (with a checkpoint when the scheduler needs
    one), so that a scheduler can stop the trial between them. The last epoch is reported
    together with the trial's result, after export and latency: a scheduler stops a trial
    once it reaches `max_t`, which must not happen before the model is exported.
    """
    from edgetune.search.trial_process import train_and_measure

    spec = task.job.spec
    epochs = spec.trainer.epochs
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        # Ray sets CUDA_VISIBLE_DEVICES only for a trial that holds GPUs; one that holds none
        # would otherwise see, and with `device: auto` use, GPUs that other trials hold.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    ray_attrs: dict[str, Any] = {"ray_node_id": ray.get_runtime_context().get_node_id()}
    if gpu_ids:
        ray_attrs["ray_gpu_ids"] = [str(i) for i in gpu_ids]
    params: dict[str, ParamValue] = config["params"]
    with tempfile.TemporaryDirectory(prefix="edgetune-ray-") as tmp:
        checkpoint_dir = Path(tmp) / "checkpoint"
        restored = tune.get_checkpoint()
        if restored is not None:  # resumed after a pause, or cloned from a better trial (PBT)
            restored.to_directory(str(checkpoint_dir))

        def report(epoch: int, metrics: Any) -> None:
            if epoch >= epochs:
                return
            values = {"epoch": epoch, **{k: float(v) for k, v in metrics.items()}}
            if task.checkpoints:
                tune.report(values, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
            else:
                tune.report(values)

        outcome = run_trial(lambda: train_and_measure(
            spec, params, layout=task.layout, study_name=task.job.study_name,
            latency=task.latency, report=report, storage_url=task.storage_url,
            probe_timeout_s=task.probe_timeout_s, tenant=task.job.tenant,
            checkpoint_dir=checkpoint_dir if task.checkpoints else None,
            one_shot=config.get("one_shot"),
        )).with_attrs(ray_params=params, **ray_attrs)
        final: dict[str, Any] = {"epoch": epochs, RESULT_KEY: outcome.to_json()}
        final.update({k: float(v) for k, v in outcome.metrics.items()})
        tune.report(final)


def _in_lasting_thread(start: Callable[[], object]) -> None:
    """Call `start` in a thread that lives as long as the process, and wait for it.

    A local Ray's processes (its GCS and raylet) are started with PR_SET_PDEATHSIG, and Linux
    sends that signal when the *thread* that started them ends, not the process: started from
    a job's thread, the local Ray was killed as its first job ended, and the worker's next ray
    job waited 60 s for the dead GCS before the worker died.
    """
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            start()
        except BaseException as e:  # re-raised in the caller's thread below
            failure.append(e)
        finally:
            started.set()
        threading.Event().wait()  # until the process exits (a daemon thread)

    threading.Thread(target=run, name="ray-processes", daemon=True).start()
    started.wait()
    if failure:
        raise failure[0]


class RayBackend:
    """Runs one job with Ray Tune; the study's sampler proposes, Ray's scheduler stops early."""

    def __init__(
        self,
        *,
        storage_url: str,
        artifact_dir: str | None = None,
        layout: DataLayout | None = None,
        latency: MeasureConfig,
        ray_address: str | None = None,
        heartbeat_interval_s: float = 5.0,
        reuse_actors: bool = True,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        max_trials: int | None = None,
    ) -> None:
        self.storage_url = storage_url
        #: The most trials of one job running at once, whatever its parallelism asks: the
        #: worker's trial processes (on a local Ray, they run on this machine) or the tenant's
        #: bound, whichever is lower; None: the job's parallelism.
        self.max_trials = max_trials
        self.probe_timeout_s = probe_timeout_s
        if layout is None and artifact_dir is None:
            raise ValueError("give the data directory's `layout` (or its `artifact_dir`)")
        #: The data directory: artifacts, datasets, teacher models, caches.
        self.layout = layout or DataLayout.of_artifacts(str(artifact_dir))
        self.latency = latency
        self.ray_address = ray_address
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reuse_actors = reuse_actors

    def connect(self) -> None:
        """Join the cluster at `ray_address`, or start a local Ray once per process."""
        if ray.is_initialized():
            return
        common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                                  "include_dashboard": False}
        if self.ray_address:
            ray.init(address=self.ray_address, **common)
        else:
            # A small object store: trials exchange only small results and checkpoints.
            _in_lasting_thread(lambda: ray.init(object_store_memory=200 * 1024**2, **common))

    def run(self, job: Job, spec: JobSpec, control: JobControl) -> JobOutcome:
        self.connect()
        # A failed trial's last result has no objective in it; Ray would refuse it.
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
        # Progress belongs in the job's events and the worker's log, not on stdout.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Checkpoints every epoch are the point with PBT and HyperBand, not a misconfiguration.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        study = JobStudy.load(job, self.storage_url, spec=spec)
        study.fail_leftovers()
        n_trials = study.job.n_trials
        finished = study.finished_count()
        pruner = PRUNERS[spec.algorithm.pruner]
        assert pruner.ray is not None  # validation admits ray-backend schedulers only
        scheduler = pruner.ray(AlgorithmContext(spec, study.space))
        trials = StudyTrials(study)
        stopper = _ControlStopper(control, self.heartbeat_interval_s, study.job.deadline)
        metric, mode = _scheduler_metric(spec)
        if spec.seed is not None:
            random.seed(spec.seed)  # PBT draws its perturbations from `random`
        task = RayTrialTask(
            job=study.job, layout=self.layout, latency=self.latency,
            checkpoints=spec.algorithm.pruner in ("hyperband", "pbt"),
            storage_url=self.storage_url, probe_timeout_s=self.probe_timeout_s,
        )
        search_alg: Searcher | None = StudySearcher(trials)
        param_space: dict[str, Any] = {}
        if pruner.mutates and not trials.exhausted:
            # PBT refuses a searcher: the population is asked for up front, and each Ray
            # trial looks its parameters up by its study trial number.
            search_alg = None
            asked = [trials.ask() for _ in range(n_trials - finished)]
            population = {c["number"]: c["params"] for c in asked if c is not None}
            param_space = {
                "number": tune.grid_search(list(population)),
                "params": tune.sample_from(lambda config: population[config["number"]]),
            }
        resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
        _warn_if_no_node_fits(resources)
        # A directory of this run's own, removed when it ends: a run that lost the job's lease
        # may still be winding down in its directory when the next run starts.
        run_name = f"{job.study_name}-{uuid.uuid4().hex[:8]}"
        # PBT clones the checkpoint a top trial had when PBT ranked it, which may be many
        # epochs old by the time the clone starts: Ray would have deleted it under any
        # `num_to_keep` (and fail the clone: ray-project/ray#9036), so a PBT run keeps every
        # checkpoint until it ends. HyperBand resumes a trial from its own latest one.
        keep = None if pruner.mutates else 4
        trainable = tune.with_resources(tune.with_parameters(run_ray_trial, task=task), resources)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler,
                num_samples=1 if search_alg is None else max(1, n_trials - finished),
                max_concurrent_trials=min(spec.budget.parallelism,
                                          self.max_trials or spec.budget.parallelism),
                # Reusing a trial's actor for the next trial skips the process start and the
                # imports (torch alone is a second): the bulk of Ray's per-trial cost.
                reuse_actors=self.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=run_name, storage_path=str(self.layout.ray),
                stop=stopper, verbose=0, log_to_file=False, callbacks=[StudyCallback(trials)],
                failure_config=tune.FailureConfig(max_failures=0),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            ),
        )
        if finished < n_trials:
            try:
                tuner.fit()
            finally:
                trials.fail_unfinished(stopper.reason or "the Ray run ended before the trial")
                # Nothing resumes from a run's directory (the study holds every trial; a new
                # run starts a new one), so its checkpoints go with it.
                shutil.rmtree(self.layout.ray / run_name, ignore_errors=True)
        if stopper.reason == "cancelled":
            return JobOutcome(JobStatus.CANCELLED, "cancelled by request")
        if stopper.reason == "lease lost":
            return JobOutcome(None, "lease lost")
        if stopper.reason == "stopping":
            return JobOutcome(None, None)
        return study.outcome()


def _warn_if_no_node_fits(resources: dict[str, float]) -> None:
    """Ray Tune waits, without an error, for a node that can hold a trial: say so at once.

    Only a warning: an autoscaling cluster may still add such a node.
    """
    need = {"CPU": resources["cpu"], "GPU": resources["gpu"]}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(all(node.get(k, 0.0) >= v for k, v in need.items() if v) for node in nodes):
        logger.warning(
            "no node of the Ray cluster can hold a trial (%g CPUs, %g GPUs; the nodes have %s); "
            "trials wait until such a node joins", need["CPU"], need["GPU"],
            "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes)
            or "none",
        )


def _scheduler_metric(spec: JobSpec) -> tuple[str | None, str | None]:
    """What Ray's schedulers compare: the one objective (as its trainer reports it), or none for
    several objectives, where only FIFO runs on this backend."""
    if len(spec.objectives) > 1:
        return None, None
    from edgetune.trainers import get_trainer_class

    objective = spec.objectives[0]
    reported = get_trainer_class(spec.trainer.name).progress_metrics
    key = progress_metric(objective.name, reported) or objective.key
    return key, "max" if objective.direction == "maximize" else "min"


class _ControlStopper(tune.Stopper):
    """Ray Tune asks `stop_all` between steps; it answers from the worker's job control."""

    def __init__(self, control: JobControl, interval_s: float, deadline: Any) -> None:
        self.control = control
        self.interval_s = interval_s
        self.deadline = deadline
        self.last_heartbeat = time.monotonic()
        self.reason: str | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "control": None}  # see `StudySearcher.__getstate__`

    def stop_all(self) -> bool:
        if self.reason is not None:
            return True
        if time.monotonic() - self.last_heartbeat >= self.interval_s:
            self.last_heartbeat = time.monotonic()
            if not self.control.heartbeat():
                self.reason = "lease lost"
        if self.reason is None and self.control.cancel_requested():
            self.reason = "cancelled"
        if self.reason is None and self.control.should_stop():
            self.reason = "stopping"
        if self.reason is None and self.deadline is not None and utcnow() >= self.deadline:
            self.reason = "time budget"
        return self.reason is not None


class StudyTrials:
    """The job's study as Ray's trials see it: asks it for parameters, tells it results.

    Ray calls back through `StudySearcher` (when it may start a trial) and `StudyCallback`
    (each epoch, and once at the end of a trial, whether it finished, was stopped by the
    scheduler, which counts as pruned, or failed). The job's lease keeps other workers out, so
    the budget is counted here rather than under the job's lock.
    """

    def __init__(self, study: JobStudy) -> None:
        self.study = study
        self.asked: dict[int, optuna.Trial] = {}
        self.reported = study.job.trainer_class().progress_metrics
        self.metric, _ = _scheduler_metric(study.spec)

    @property
    def exhausted(self) -> bool:
        if self.study.budget().spent:
            return True
        # A one-shot job ends early when its evaluations leave fewer finalists than budget.
        return self.study.spec.algorithm.one_shot is not None and self.study.is_done()

    def ask(self) -> dict[str, Any] | None:
        """A new trial of the study: the config Ray starts it with; None while a one-shot job
        waits for its evaluations to end before it asks its finalists."""
        from edgetune.storage import study_store

        if self.study.spec.algorithm.one_shot is not None:
            trial_id = self.study.new_trial()
            if trial_id is None:
                return None
        else:
            trial_id = study_store.create_trial(self.study.study)
        asked = self.study.sample(trial_id)
        self.asked[asked.number] = asked.trial
        logger.info("study %s: trial %d asked for Ray with %s", self.study.job.study_name,
                    asked.number, asked.params)
        return {"number": asked.number, "params": asked.params, "one_shot": asked.one_shot}

    def progress(self, number: int, result: dict[str, Any]) -> None:
        """An epoch's report: the learning curve, for the dashboard (one objective only:
        Optuna refuses intermediate values for several)."""
        trial = self.asked.get(number)
        if trial is None or RESULT_KEY in result or self.metric not in result:
            return
        # A PBT restart reports an epoch again; Optuna keeps the first value and warns.
        with contextlib.suppress(ValueError, TypeError):
            trial.report(float(result[self.metric]), step=int(result["epoch"]))

    def finish(self, number: int, last: dict[str, Any] | None, *, error: bool) -> None:
        trial = self.asked.pop(number, None)
        if trial is None:
            return
        last = last or {}
        if RESULT_KEY in last:
            outcome = TrialOutcome.from_json(last[RESULT_KEY])
        elif error:
            outcome = TrialOutcome.failed("the trial's Ray actor failed", infra=True)
        else:  # the scheduler stopped it between epochs
            outcome = TrialOutcome(
                OutcomeState.PRUNED,
                metrics={k: v for k, v in last.items() if k in self.reported},
                user_attrs={"pruned_at_epoch": last.get("epoch")})
        state = self.study.tell(_id(trial), outcome)
        logger.info("study %s: trial %d %s", self.study.job.study_name, number,
                    state.name.lower())

    def fail_unfinished(self, reason: str) -> None:
        """Mark failed every asked trial Ray did not complete (the run was stopped or broke)."""
        for trial in list(self.asked.values()):
            self.study.tell(_id(trial), TrialOutcome.failed(reason, infra=True))
        self.asked.clear()


def _id(trial: optuna.Trial) -> int:
    from edgetune.storage import study_store

    return study_store.trial_id(trial)


class StudySearcher(Searcher):
    """A Ray Tune searcher that asks the job's study for each trial's parameters."""

    def __init__(self, trials: StudyTrials) -> None:
        super().__init__()
        self.trials = trials

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return True  # the study's sampler already knows the objectives

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.trials.exhausted:
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's "finished" marker
        return self.trials.ask()

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Told by `StudyCallback`, which sees PBT's trials too."""

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study holds every trial, and a new run resumes from it."""

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the searcher with the experiment's state; the study (its sampler's
        # locks, its database engine) stays behind, as in `save`.
        return {**self.__dict__, "trials": None}

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore; see `save`."""


class StudyCallback(tune.Callback):
    """Tells the study what became of each Ray trial.

    A trial is known by the study's trial number in its first config: PBT later replaces a
    trial's config with a copy of a better trial's, number included.
    """

    def __init__(self, trials: StudyTrials) -> None:
        self.trials = trials
        self.numbers: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "trials": None}  # see `StudySearcher.__getstate__`

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.numbers.setdefault(trial.trial_id, int(trial.config["number"]))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.trials.progress(self.numbers[trial.trial_id], result)

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        self.trials.finish(self.numbers[trial.trial_id], trial.last_result, error=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.trials.finish(self.numbers[trial.trial_id], trial.last_result, error=True)
