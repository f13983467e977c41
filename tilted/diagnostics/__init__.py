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
from tilted.diagnostics.verdicts import Diagnosis, Verdict, diagnose, distinct_ancestors, lineages

__all__ = [
    "Diagnosis",
    "Verdict",
    "diagnose",
    "distinct_ancestors",
    "from_datatree",
    "lineages",
    "load",
    "pareto_khat",
    "save",
    "temperature_sensitivity",
    "to_datatree",
    "versions",
]
