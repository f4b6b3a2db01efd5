"""`train(config)`: a whole fine-tuning run from a `RunConfig`.

data → `TransferModel` → `FineTuner` stages → run directory (`config.yaml`,
`history.csv`, plots, best weights, `model.keras`, `report.md`) → SavedModel.
The `kerastl train` command and the recipes are this function with a YAML file.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

from kerastl._quiet import native_stderr_silenced
from kerastl.app.builders import build_model, build_tuner
from kerastl.app.config import load_config, save_config, to_dict
from kerastl.app.data import Data, load_data
from kerastl.app.resolve import resolve
from kerastl.app.schema import RunConfig
from kerastl.training.evaluation import Evaluation, evaluate
from kerastl.training.run_directory import new_run_directory
from kerastl.training.staged_backup import (
    BackupError,
    RunFinished,
    StagedBackup,
    signature_differences,
)


@dataclasses.dataclass
class RunResult:
    """What a run produced.

    Args:
        run_dir: the run directory.
        report: path of `report.md`.
        saved_model: path of the exported SavedModel, or None.
        history: the Keras `History` over all stages.
        best: the best monitored value and its epoch.
        model: the trained `TransferModel` (best epoch's weights).
        transfer: the transfer report's rows, or None.
        test: the test data's `Evaluation` (`kerastl.evaluate`, evaluated
            once after training, with `data.tta`), or None.
        best_per_stage: `(stage, best monitored value, epoch)` per stage.
        seconds: training time (the stages, not data loading or export).
        stages: `FineTuner.stage_summaries` (epochs, caching, seconds per stage).
    """

    run_dir: str
    report: str
    saved_model: str | None
    history: object
    best: tuple[float | None, int | None]
    model: object
    transfer: list[dict] | None = None
    test: Evaluation | None = None
    best_per_stage: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    stages: list = dataclasses.field(default_factory=list)


def train(
    config: RunConfig, *, verbose: int | str = "auto", resume: str | os.PathLike | None = None
) -> RunResult:
    """Runs the configured fine-tuning and writes the run directory.

    A run backs itself up in `RUN_DIR/backup` every epoch. A killed run
    resumes with `resume=RUN_DIR` (`kerastl train --resume RUN_DIR`), and
    running the same config again resumes the newest unfinished run of it
    in `output_dir` (saying so); a changed config starts a new run directory.

    Args:
        config: a `RunConfig` (see `kerastl.app.config.load_config`).
        verbose: progress output: `0` only the final summary lines, `1` progress
            bars, `2` a line per epoch (and every few seconds of other work),
            `"auto"` bars on a terminal and lines otherwise.
        resume: a run directory holding an unfinished run of this config.

    Returns:
        A `RunResult`.

    Raises:
        ValueError: `resume` names a run of another config (the differing
            keys named) or a folder without a run.
        RunFinished: the run in `resume` finished.
        RunInterrupted: SIGTERM or Ctrl-C stopped the run, after a backup.

    Example:
        >>> from kerastl.app.config import load_config
        >>> result = train(load_config("recipes/image_classification.yaml"))
        >>> print(open(result.report).read())
    """
    import keras

    from kerastl.distribute import get_strategy, is_chief, set_precision
    from kerastl.training.stage_plan import plan_stages

    spec = resolve(config).spec  # checked as a whole before any data or model
    set_precision(config.train.precision)
    with native_stderr_silenced():  # TF's C++ device start-up lines ("failed call to cuInit")
        strategy = get_strategy(config.train.strategy)
    chief = is_chief(strategy)
    say = _say if chief else (lambda message: None)
    if resume is not None:  # checked before the data and model are built
        check_same_config(config, os.fspath(resume))
        state = StagedBackup(os.path.join(os.fspath(resume), "backup")).peek()
        if state is not None and state.get("finished"):
            raise RunFinished(
                f"The run in {os.fspath(resume)} finished ({state['epoch']} epochs, best epoch "
                f"{state['best_epoch']}): nothing to resume. Its report: "
                f"{os.path.join(os.fspath(resume), 'report.md')}."
            )
    elif chief:
        resume = unfinished_run(config)
        if resume is not None:
            _say(
                f"{resume} holds an unfinished run of this config: resuming it "
                "(move that folder aside to start over)."
            )
    data = load_data(config, spec, verbose=verbose if chief else 0)  # shuffles: own seeds
    # Seeded after the data: preparing a TFDS dataset on first use draws random
    # numbers, and the model's initialisation must not depend on whether it ran.
    keras.utils.set_random_seed(config.train.seed)
    for line in data.console_lines("report.md"):
        say(line)
    with strategy.scope():
        model = build_model(config, data.class_names, spec=spec)
    plan_stages(model, config.stages, data.validation)  # bad stages fail before the run directory
    if resume is not None:
        run_dir = os.fspath(resume)
        say(f"Run directory (resumed): {run_dir}")
    elif chief:
        run_dir = new_run_directory(config.output_dir, config.name)
        _say(f"Run directory: {run_dir}")
    else:  # a non-chief worker trains in step with the chief and writes nothing shared
        run_dir = tempfile.mkdtemp(prefix="kerastl-worker-")
    try:
        return _train_in(config, data, model, strategy, run_dir, say, verbose)
    finally:
        if not chief and resume is None:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train_in(config: RunConfig, data: Data, model, strategy, run_dir: str, say, verbose):
    if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        save_config(config, run_dir)
    tuner = build_tuner(config, model, strategy, run_dir=run_dir, verbose=verbose)
    started = time.perf_counter()
    history = tuner.fit(data.train, data.validation, stages=config.stages)
    seconds = time.perf_counter() - started
    summaries = "\n".join(report.summary() for report in data.reports)
    sections = [f"## Data\n\n```\n{summaries}\n```"] if data.reports else []
    transfer = None
    if config.transfer_report:
        from kerastl.app.transfer_report import compare, markdown

        transfer = compare(
            config, data, tuner.recorder, seconds, strategy=strategy, verbose=verbose
        )
        sections.append(markdown(transfer, config.train.monitor))
    test_results = None
    if data.test is not None:  # once, after training, with the best epoch's weights
        test_results = evaluate(model, data.test, tta=config.data.tta, verbose=verbose)
        sections.append(
            test_results.markdown("Test (evaluated once, after training, best epoch's model)")
        )
    report = tuner.write_report(
        data.validation,
        title=f"{config.name}: {config.model.backbone}",
        extra_sections=sections,
        insight=config.insight,
    )
    saved_model = None
    if config.export:
        from kerastl.export import saved_model as export_saved_model

        saved_model = export_saved_model(
            model, os.path.join(run_dir, "saved_model"), samples=data.validation, verbose=verbose
        )
    best = (tuner.recorder.best, tuner.recorder.best_epoch)
    for line in tuner.summary(seconds, report=report, test=test_results, saved_model=saved_model):
        say(line)
    return RunResult(
        run_dir,
        report,
        saved_model,
        history,
        best,
        model,
        transfer,
        test_results,
        tuner.recorder.best_per_stage(),
        seconds,
        tuner.stage_summaries,
    )


def check_same_config(config: RunConfig, run_dir: str) -> None:
    """Raises unless `run_dir` holds a run of `config` (naming the keys that differ).

    Example:
        >>> check_same_config(load_config("recipes/image_classification.yaml"), "runs/elpv-lite0")
    """
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(saved_path):
        raise ValueError(
            f"{run_dir!r} holds no run to resume (no config.yaml). Received: resume={run_dir!r}."
        )
    saved = to_dict(load_config(saved_path))
    differences = signature_differences(saved, to_dict(config))
    if differences:
        raise ValueError(
            f"The run in {run_dir} was trained with another config, so it cannot be resumed "
            f"with this one: {'; '.join(differences)}. Resume it with its own config "
            f"(`kerastl train --resume {run_dir}` alone reads it), or start a new run."
        )


def unfinished_run(config: RunConfig) -> str | None:
    """The newest run directory of `config.name` in `config.output_dir` that holds
    an unfinished backup of this same config, or None.

    Example:
        >>> unfinished_run(load_config("recipes/image_classification.yaml"))
        'runs/elpv-lite0-2'
    """
    base = os.path.join(os.fspath(config.output_dir), config.name)
    candidates = [base] + [f"{base}-{n}" for n in range(2, 1000) if os.path.isdir(f"{base}-{n}")]
    for run_dir in reversed([path for path in candidates if os.path.isdir(path)]):
        backup = StagedBackup(os.path.join(run_dir, "backup"))
        try:
            state = backup.peek()
            check_same_config(config, run_dir)
        except (ValueError, BackupError):
            continue
        if state is not None and not state.get("finished"):
            return run_dir
    return None


def lr_find_for_config(config: RunConfig):
    """The LR range test for the first stage's setup, its plot in the run directory.

    Says what `kerastl train` says of the data (the image folder check's
    progress, skipped records, notes) before the test.

    Args:
        config: the run configuration (its first stage says what trains).

    Returns:
        `(LRFindResult, plot path)`.

    Example:
        >>> result, plot = lr_find_for_config(load_config("recipes/image_classification.yaml"))
    """
    import keras

    from kerastl.training.lr_finder import lr_find
    from kerastl.training.stage_plan import plan_stages

    spec = resolve(config).spec
    keras.utils.set_random_seed(config.train.seed)
    data = load_data(config, spec, verbose="auto")
    for line in data.console_lines():
        _say(line)
    model = build_model(config, data.class_names, spec=spec)
    plan_stages(model, config.stages[:1])[0].set_trainable(model)
    model.compile(
        keras.optimizers.Adam(config.stages[0].lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    run_dir = new_run_directory(config.output_dir, f"{config.name}-lr-find")
    plot = os.path.join(run_dir, "lr_find.png")
    return lr_find(model, data.train.repeat(), plot_path=plot), plot


def _say(message: str) -> None:
    print(f"kerastl: {message}", flush=True)
