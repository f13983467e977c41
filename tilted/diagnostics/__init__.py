"""Diagnostics: ArviZ conversion, verdicts on when to trust a run, plots and HTML reports.

Everything here reads only the fields every engine's :class:`~tilted.inference.Result` has, so it
applies to SMC, importance sampling and later engines alike.

>>> dt = to_datatree(result)               # ArviZ DataTree (posterior, log_likelihood, steps, ...)
>>> save(dt, "result.nc"); dt = load("result.nc")
>>> diagnosis = diagnose(result)           # list of Verdict, with .ok
>>> figs = figures(result)                 # name -> matplotlib Figure
>>> write_report(result, "report.html")    # self-contained HTML
"""

from tilted.diagnostics.arviz import (
    from_datatree,
    load,
    pareto_khat,
    save,
    temperature_sensitivity,
    to_datatree,
    versions,
)
from tilted.diagnostics.plots import (
    figures,
    plot_genealogy,
    plot_images,
    plot_rewards,
    plot_samples,
    plot_steps,
    plot_weights,
)
from tilted.diagnostics.report import render_report, write_report
from tilted.diagnostics.verdicts import Diagnosis, Verdict, diagnose, distinct_ancestors, lineages

__all__ = [
    "Diagnosis",
    "Verdict",
    "diagnose",
    "distinct_ancestors",
    "figures",
    "from_datatree",
    "lineages",
    "load",
    "pareto_khat",
    "plot_genealogy",
    "plot_images",
    "plot_rewards",
    "plot_samples",
    "plot_steps",
    "plot_weights",
    "render_report",
    "save",
    "temperature_sensitivity",
    "to_datatree",
    "versions",
    "write_report",
]
