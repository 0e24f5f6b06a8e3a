"""The hyperparameter sweep (`fashion-mlp sweep`, sweeps/dvc.yaml): one job per module.

    space.py   the trials' configurations, drawn from params `sweep.space` (typed in params.py)
    trials.py  running the trials on Ray Tune; their outcomes come back through Tune's results
    report.py  the reports: sweep.md, trials.csv, curves.png, best.yaml
    run.py     the stage: plan, track (a parent run, a child run per trial), tune, test, report

This file imports nothing: each stage imports only the modules it runs.
"""
