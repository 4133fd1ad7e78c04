"""Hyperparameter search in the daemon: the controller (trials as jobs) and its
Optuna adapter (docs/hpo.md)."""

from schedulerd.daemon.experiments.controller import (
    ExperimentController,
    NotFound,
    ReportRefused,
)

__all__ = ["ExperimentController", "NotFound", "ReportRefused"]
