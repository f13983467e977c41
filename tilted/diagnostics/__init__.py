"""Diagnostics: ArviZ conversion, verdicts on when to trust a run, plots and HTML reports."""

from tilted.diagnostics.arviz import (
    from_datatree,
    load,
    pareto_khat,
    save,
    temperature_sensitivity,
    to_datatree,
    versions,
)

__all__ = ["from_datatree", "load", "pareto_khat", "save", "temperature_sensitivity", "to_datatree", "versions"]
