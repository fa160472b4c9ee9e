"""finetune-gym's benchmarks: one harness (``harness.py``: declare jobs -> run or resume -> store ->
report) and, per benchmark, a declaration, a report and a command line:

- the GTSRB low-data grid: ``grid.py``, ``grid_report.py``, ``gtsrb_lowdata.py``;
- the headroom study: ``headroom_study.py``, ``headroom_report.py``, ``headroom.py`` (its search
  through Optuna directly), ``headroom_tune.py`` (the same search as a Ray Tune experiment);
- the transfer benchmark: ``transfer_setup.py``, ``transfer_report.py``, ``transfer.py``;
- the step overhead: ``overhead_setup.py``, ``overhead_measures.py``, ``overhead_full_run.py``,
  ``step_overhead_report.py``, ``step_overhead.py``;
- the executors (process pool against Ray): ``executors.py``;
- Population Based Training as a multi-run baseline, on Ray Tune: ``pbt.py``;

``timing.py`` holds what every speed measurement shares.

Each command line runs as a file from the repository (``python benchmarks/gtsrb_lowdata.py run``)
or as a module (``python -m benchmarks.gtsrb_lowdata run``); the protocols are in
benchmarks/README.md and in each command line's docstring.
"""
