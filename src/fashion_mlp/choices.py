"""The names params.yaml accepts for the keys that pick code from a registry: the vocabulary.

    models.NAME.activation   ACTIVATIONS   (nonlinearities.py builds each)
    train.optimizer          OPTIMIZERS    (optimizers.py)
    train.lr_schedule        SCHEDULES     (optimizers.py)
    train.numerics           NUMERICS      (model.py's layers, linalg.pin_numerics)

params.py validates against these names; each registry gives every name its code and refuses,
when it is imported, to run with a name it has no code for (so an accepted name always has code
behind it, and nothing falls through to a default). Names only, no code: this module decides
whether a params file is accepted, never what a stage computes. Like the recording layer it is
therefore no stage's code dep in dvc.yaml (README "Changing code"): adding an optimizer, say,
edits this list and optimizers.py, and only the trainings rerun.
"""

from collections.abc import Iterable

ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "elu")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
# portable: the same bits on every x86-64 CPU; native: torch's fastest kernels for this CPU.
NUMERICS = ("portable", "native")


def check_registry(registry: str, names: tuple[str, ...], implemented: Iterable[str]) -> None:
    """Refuse a registry that lacks code for an accepted name (or has code for an unknown one):
    each registry module calls this as it is imported."""
    built = set(implemented)
    if built != set(names):
        raise ImportError(
            f"{registry}: accepted names {sorted(names)} but code for {sorted(built)}; "
            "add the missing entry to both choices.py and the registry"
        )
