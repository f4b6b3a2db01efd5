"""Training a `TransferModel`: the stage loop (`FineTuner`, `Stage`, planned
once by `stage_plan`, each stage run by `stage_run`), feature caching,
gradual unfreezing, the LR range test, schedules, losses, metrics, the run
directory (history, best checkpoint, plots, `report.md`) and what a run shows
of its mistakes (`calibration`, `gradcam`, `insight`).

The public names are exported from `kerastl` itself.
"""
