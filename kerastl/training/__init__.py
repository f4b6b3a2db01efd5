"""Training a `TransferModel`: the stage loop (`FineTuner`, `Stage`), feature
caching, gradual unfreezing, the LR range test, schedules, losses, metrics,
and the run directory (history, best checkpoint, plots, `report.md`).

The public names are exported from `kerastl` itself.
"""
