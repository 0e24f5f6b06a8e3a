"""MLflow, owned by one layer: stage code asks it for what it needs and never imports mlflow.

    store.py     the connection: where runs go, one client per process, errors as one line
    runs.py      runs: start, log, end (FINISHED, FAILED, KILLED), orphans, datasets, models
    registry.py  the model registry: the champion alias, and loading only models we wrote
    team.py      team-setup on an authenticated server: experiment, model, permissions

Each stage imports only the modules it runs (dvc.yaml lists them as code deps), so this file
imports nothing.
"""
