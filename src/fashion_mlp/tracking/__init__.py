"""MLflow, owned by one layer: stage code asks it for what it needs and never imports mlflow.

    store.py        the connection: where runs go, one client per process, errors as one line
    runs.py         runs: start, log, end (FINISHED, FAILED, KILLED); the door stage code uses
    calls.py        the background queue a run's calls take, in order
    orphans.py      who runs a run, and closing the runs of processes that died
    models.py       logging a model (with its checkpoint) and hashing its files
    datasets.py     the processed splits as a run's data inputs
    evaluations.py  an evaluation added to the training run
    provenance.py   which run trained a checkpoint
    tags.py         the tags runs and models are found by
    registry.py     the model registry: the champion alias, and loading only models we wrote
    team.py         team-setup on an authenticated server: experiment, model, permissions
    ui.py           `fashion-mlp ui`: the store's MLflow UI, and the link to its training runs

Each stage imports only the modules it runs (dvc.yaml lists them as code deps), so this file
imports nothing.
"""
