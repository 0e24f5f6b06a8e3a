"""Where the pipeline's files live: the default of every path option, as dvc.yaml passes them.

Constants only, so that every command can name its defaults without importing a stage.
"""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
CONFIGS_DIR = Path("configs")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
EVALUATION_DIR = Path("evaluation")
REPORTS_DIR = Path("reports")
