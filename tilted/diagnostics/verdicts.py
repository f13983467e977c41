"""When to trust a run: diagnostics of a result, each with a documented rule and a verdict.

Every diagnostic reads only the fields every engine's :class:`~tilted.inference.Result` has (through
its DataTree, :func:`tilted.diagnostics.to_datatree`), so it applies to SMC, importance sampling and
later engines alike; a diagnostic that needs something a result lacks (a per-step trace, several
runs, temperatures, pretrained draws) says so and gives no verdict (``passed=None``).

Rules (S = N particles per run, R runs; the worst run decides):

Engines that return unweighted particles and no evidence (NaN log Ẑ: guidance, search) get no
verdict on weights or evidence: their particles are not a weighted approximation of the target.

``ess_final``
    Kish ESS of the final weights, (Σw)²/Σw², at least ``min_ess_fraction``·N (default 10 %).
    Below that, every weighted estimate rests on fewer than N/10 effective particles. A rule of
    thumb (Kong 1992; Liu 2001, §2.5.3); the Kish ESS is itself only a proxy (Elvira, Martino &
    Robert 2022), hence the next checks.
``ess_min_step``
    The smallest ESS over all steps, at least ``min_step_ess_fraction``·N (default 5 %) and 2: a
    step where the weights collapse onto a handful of particles leaves a population that
    resampling cannot diversify again (weight degeneracy; Doucet & Johansen 2011, §3.5).
``pareto_khat``
    Pareto k̂ of the final weights (PSIS, Vehtari et al. 2024, via arviz-stats) below
    min(1 − 1/log10 S, 0.7): above it the weight distribution's tail is too heavy for the
    self-normalised estimate to converge at a useful rate with S particles (k̂ > 0.7: the variance
    is practically infinite). Needs S ≥ 25 (a tail of at least 5 weights).
``log_evidence_variance``
    The sample variance of log Ẑ across runs below 1 (R ≥ 2): Ẑ is then accurate to about a factor
    e; Doucet, Pitt, Deligiannidis & Kohn (2015) find σ(log Ẑ) ≈ 1–1.7 the practical limit for
    pseudo-marginal use. With R runs the variance itself has relative error about √(2/(R − 1)).
``distinct_ancestors``
    Path degeneracy: the ancestors of the final particles, composed back to step 0, must include
    at least ``min_ancestors`` (default 2) distinct initial particles; with one, every final
    particle descends from one draw of x_K (Andrieu, Doucet & Holenstein 2010; Jacob, Murray &
    Rubenthaler 2015). A low count alone is common after many resampling steps; a single one is a
    collapse.
``gibbs_mixing``
    Particle Gibbs only: every level k of the retained path changes in at least 5 % of the
    conditional sweeps (a level that never renews is stuck: path degeneracy of the reference;
    Lindsten, Jordan & Schön 2014), and each chain's sweeps after burn-in hold at least 5
    effectively independent draws of the reward, S/τ with τ the integrated autocorrelation time
    (:meth:`~tilted.inference.SweepTrace.integrated_time`). The other per-step checks do not apply
    to a chain (its result keeps no per-step trace in the DataTree).
``intermediate_potential``
    Whether the intermediate potentials ψ_k (r(x̂_0(x_k))/α and its gradient) deserved trust; three
    signs of a potential that misleads, typically a learned denoiser's x̂_0 at high noise, where an
    ε error is amplified by √((1 − ᾱ)/ᾱ): (1) an ESS collapse in the first steps, min ESS over the
    first ⌈S/10⌉ steps below ``min_early_ess_fraction``·N (default 0.5; at high noise an honest
    potential barely varies between particles); (2) Pareto k̂ of the incremental weights exp(G) of an
    intermediate step (pooled over runs, which share the step's G; needs 25 values) ≥ 0.7, the
    practical infinite-variance limit; (3) the gradient proposal's trust region bound for more than
    ``max_clipped`` (default 10 %) of the particles at some step. The message says what to try.
``tilt`` (and ``reward[NAME]``, information only)
    The tilt raises the expected log-factor: E_tar[Σ r_j/α_j] ≥ E_pθ[Σ r_j/α_j] (the covariance of
    ℓ and e^ℓ is non-negative). Checked when pretrained draws are known (the ``prior`` group):
    the weighted mean after the tilt must not fall more than 3 standard errors below the pretrained
    mean. A failure points to broken weights or a wrong sign. ``reward[NAME]`` reports each reward
    before (pretrained, or the final particles with weights ignored) and after (weighted mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from tilted.inference.result import Result

__all__ = [
    "Diagnosis",
    "Verdict",
    "diagnose",
    "distinct_ancestors",
    "lineages",
]


@dataclass(frozen=True)
class Verdict:
    """One diagnostic: its value, the threshold of its rule, and whether the run passed.

    ``passed`` is ``None`` when the rule does not apply (information only); ``rule`` states the
    rule, ``message`` what was found.
    """

    name: str
    value: float | None
    threshold: float | None
    passed: bool | None
    message: str
    rule: str = ""

    @property
    def status(self) -> str:
        return {True: "pass", False: "FAIL", None: "info"}[self.passed]


class Diagnosis(list):
    """The verdicts of :func:`diagnose` (a list of :class:`Verdict`), with ``.ok`` and lookup by name.

    ``datatree`` is the DataTree that was judged (``None`` when built by hand); with it, a notebook
    shows the summary of :func:`tilted.diagnostics.report.render_summary`, otherwise the verdicts.
    """

    def __init__(self, verdicts=(), datatree: xr.DataTree | None = None):
        super().__init__(verdicts)
        self.datatree = datatree

    @property
    def ok(self) -> bool:
        """True when no verdict failed (information-only verdicts do not count)."""
        return all(v.passed is not False for v in self)

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self if v.passed is False]

    def get(self, name: str) -> Verdict:
        for v in self:
            if v.name == name:
                return v
        raise KeyError(f"no verdict named {name!r}; have {[v.name for v in self]}")

    def table(self) -> str:
        """A plain-text table of the verdicts."""
        rows = [("diagnostic", "status", "value", "threshold", "message")]
        for v in self:
            rows.append((v.name, v.status, _fmt(v.value), _fmt(v.threshold), v.message))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table() + f"\n\noverall: {'ok' if self.ok else 'do not trust this run'}"

    def __repr__(self) -> str:
        status = [v.status for v in self]
        failed = f" ({', '.join(v.name for v in self.failed)})" if self.failed else ""
        return (
            f"Diagnosis(ok={self.ok}: {len(self)} verdicts, {status.count('pass')} pass, "
            f"{status.count('FAIL')} FAIL{failed}, {status.count('info')} info)"
        )

    def _repr_html_(self) -> str:
        from tilted.diagnostics.report import _CSS_TABLES, _SCOPE, _badge, _scoped, _verdicts_html, render_summary

        if self.datatree is not None:
            return render_summary(self.datatree, diagnosis=self)
        style = f"<style>{_scoped(_CSS_TABLES, '.' + _SCOPE)}</style>"
        return f'<div class="{_SCOPE}">{style}<p>{_badge(self)}</p>{_verdicts_html(self, compact=True)}</div>'


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e9:
        return f"{int(x)}"
    return f"{x:.4g}"


# -- genealogy ---------------------------------------------------------------------------------------
def lineages(ancestors: np.ndarray) -> np.ndarray:
    """Positions of every final particle's ancestor at each step, ``(..., S, N)`` from ``(..., S, N)``.

    ``ancestors[s, i]`` is the particle (before resampling, at step s) that particle i after step s
    copies; particle j before resampling at step s moved from particle j after step s − 1. So the
    lineage of final particle i is i ← a[S−1, i] ← a[S−2, ·] ← … and ``out[..., 0, :]`` are the
    initial draws (of x_K) that the final particles descend from.
    """
    a = np.asarray(ancestors)
    S = a.shape[-2]
    out = np.empty_like(a)
    idx = np.broadcast_to(np.arange(a.shape[-1]), a.shape[:-2] + (a.shape[-1],)).copy()
    for s in range(S - 1, -1, -1):
        idx = np.take_along_axis(a[..., s, :], idx, axis=-1)
        out[..., s, :] = idx
    return out


def distinct_ancestors(ancestors: np.ndarray) -> np.ndarray:
    """Number of distinct ancestors of the final particles at every step, ``(..., S)``."""
    lin = lineages(ancestors)
    srt = np.sort(lin, axis=-1)
    return 1 + (np.diff(srt, axis=-1) != 0).sum(-1)


# -- helpers -----------------------------------------------------------------------------------------
def _as_datatree(data: Result | xr.DataTree) -> xr.DataTree:
    if isinstance(data, xr.DataTree):
        return data
    from tilted.diagnostics.arviz import to_datatree

    return to_datatree(data)


def _kish(log_w: np.ndarray) -> np.ndarray:
    lw = log_w - log_w.max(-1, keepdims=True)
    w = np.exp(lw)
    return w.sum(-1) ** 2 / (w**2).sum(-1)


def _worst(values: np.ndarray, lowest: bool = True) -> tuple[float, int]:
    v = np.asarray(values, dtype=np.float64)
    i = int(np.nanargmin(v) if lowest else np.nanargmax(v))
    return float(v[i]), i


def _runs_text(bad: np.ndarray, R: int) -> str:
    runs = np.flatnonzero(bad).tolist()
    if R == 1 or not runs:
        return ""
    shown = ", ".join(map(str, runs[:8])) + (", …" if len(runs) > 8 else "")
    return f"; failing run(s): {shown} of {R}"


# -- the diagnostics -----------------------------------------------------------------------------------
def _unweighted(dt: xr.DataTree) -> bool:
    """An approximate engine (guidance, search) returns unweighted particles and no evidence (NaN log Ẑ)."""
    return bool(np.isnan(dt["sample_stats"]["log_marginal_likelihood"].values).all())


def check_ess_final(dt: xr.DataTree, min_fraction: float = 0.1) -> Verdict:
    lw = dt["particles"]["log_weight"].values
    R, N = lw.shape
    ess = _kish(lw)
    threshold = min_fraction * N
    worst, run = _worst(ess)
    rule = f"final Kish ESS ≥ {min_fraction:g}·N"
    if _unweighted(dt):
        msg = f"unweighted particles from an approximate engine ({dt.attrs.get('engine', '?')}): no weights to judge"
        return Verdict("ess_final", worst, threshold, None, msg, rule)
    passed = bool(worst >= threshold)
    where = f" (run {run})" if R > 1 else ""
    msg = f"final ESS {worst:.1f} of {N} particles{where}" + _runs_text(ess < threshold, R)
    return Verdict("ess_final", worst, threshold, passed, msg, rule)


def check_ess_min_step(dt: xr.DataTree, min_fraction: float = 0.05) -> Verdict:
    rule = f"min over steps of ESS ≥ max({min_fraction:g}·N, 2)"
    if "steps" not in dt.children:
        return Verdict("ess_min_step", None, None, None, "the engine recorded no per-step trace", rule)
    if _unweighted(dt):
        msg = f"unweighted particles from an approximate engine ({dt.attrs.get('engine', '?')}): no weights to judge"
        return Verdict("ess_min_step", None, None, None, msg, rule)
    ess = dt["steps"]["ess"].values  # (R, S)
    R, S = ess.shape
    N = dt["particles"].sizes["particle"]
    threshold = max(min_fraction * N, 2.0)
    per_run = ess.min(-1)
    worst, run = _worst(per_run)
    step = int(np.argmin(ess[run]))
    passed = bool(worst >= threshold)
    where = f"run {run}, " if R > 1 else ""
    msg = f"smallest ESS {worst:.1f} of {N} ({where}step {step} of {S - 1})" + _runs_text(per_run < threshold, R)
    return Verdict("ess_min_step", worst, threshold, passed, msg, rule)


def check_pareto_khat(dt: xr.DataTree) -> Verdict:
    from tilted.diagnostics.arviz import pareto_khat

    lw = dt["particles"]["log_weight"].values
    R, N = lw.shape
    threshold = min(1.0 - 1.0 / math.log10(N), 0.7) if N > 1 else float("nan")
    rule = "Pareto k̂ of the final weights < min(1 − 1/log10 N, 0.7) (Vehtari et al. 2024)"
    k = np.atleast_1d(pareto_khat(lw))
    if np.all(np.isnan(k)):
        why = "fewer than 25 particles" if N < 25 else "the largest weights are all equal (uniform weights)"
        return Verdict("pareto_khat", None, None, None, f"k̂ undefined: {why}", rule)  # no threshold to show
    worst, run = _worst(k, lowest=False)
    passed = bool(worst < threshold)
    where = f" (run {run})" if R > 1 else ""
    meaning = "reliable" if passed else ("unreliable: tail too heavy for N" if worst < 0.7 else "unreliable")
    msg = f"k̂ = {worst:.2f}{where}: {meaning}" + _runs_text(k >= threshold, R)
    return Verdict("pareto_khat", worst, threshold, passed, msg, rule)


def check_log_evidence_variance(dt: xr.DataTree, max_variance: float = 1.0) -> Verdict:
    rule = f"sample variance of log Ẑ across runs < {max_variance:g} (needs num_runs ≥ 2; per group with groups)"
    lz = dt["sample_stats"]["log_marginal_likelihood"].values
    P = int((_json_attr(dt, "config") or {}).get("groups", 1))  # runs r = m·P + p: P different targets
    M = lz.shape[0] // P
    if _unweighted(dt):
        msg = f"no evidence estimate: {dt.attrs.get('engine', 'the engine')} is an approximate sampler"
        return Verdict("log_evidence_variance", None, max_variance, None, msg, rule)
    if M < 2:
        what = f"one run (log Ẑ = {lz[0]:.4g})" if P == 1 else f"one run per group ({P} groups)"
        return Verdict("log_evidence_variance", None, max_variance, None, f"{what}: use num_runs ≥ 2", rule)
    per_group = np.var(lz.reshape(M, P), axis=0, ddof=1)
    var, group = float(per_group.max()), int(per_group.argmax())
    passed = bool(var < max_variance)
    where = f" (group {group}, {M} runs each)" if P > 1 else f" over {M} runs"
    msg = f"Var(log Ẑ) = {var:.3g}{where} (log Ẑ from {lz.min():.3g} to {lz.max():.3g})"
    return Verdict("log_evidence_variance", var, max_variance, passed, msg, rule)


def check_distinct_ancestors(dt: xr.DataTree, min_ancestors: int = 2) -> Verdict:
    rule = f"distinct initial ancestors of the final particles ≥ {min_ancestors}"
    if "steps" not in dt.children:
        return Verdict("distinct_ancestors", None, None, None, "the engine recorded no ancestors", rule)
    anc = dt["steps"]["ancestors"].values  # (R, S, N)
    R, _, N = anc.shape
    counts = distinct_ancestors(anc)[..., 0]  # (R,)
    worst, run = _worst(counts)
    passed = bool(worst >= min_ancestors)
    where = f" (run {run})" if R > 1 else ""
    msg = f"{int(worst)} of {N} initial particles survive in the final population{where}" + _runs_text(
        counts < min_ancestors, R
    )
    return Verdict("distinct_ancestors", worst, float(min_ancestors), passed, msg, rule)


def check_intermediate_potential(
    dt: xr.DataTree, min_early_ess_fraction: float = 0.5, max_khat: float = 0.7, max_clipped: float = 0.1
) -> Verdict:
    from tilted.diagnostics.arviz import pareto_khat

    name = "intermediate_potential"
    rule = (
        f"early min ESS ≥ {min_early_ess_fraction:g}·N, k̂ of intermediate incremental weights < {max_khat:g} "
        "(at steps after which ESS < N/2), "
        f"drift clipped for ≤ {max_clipped:.0%} of particles per step"
    )
    if "steps" not in dt.children or _unweighted(dt):
        return Verdict(name, None, None, None, "no per-step weights to judge", rule)
    st = dt["steps"]
    ess = st["ess"].values  # (R, S)
    R, S = ess.shape
    N = dt["particles"].sizes["particle"]
    early = max(1, math.ceil(S / 10))
    early_ess, run = _worst(ess[:, :early].min(-1))
    problems, tries = [], set()
    if early_ess < min_early_ess_fraction * N:
        step = int(np.argmin(ess[run, :early]))
        problems.append(f"ESS fell to {early_ess:.1f} of {N} at step {step} of the first {early}")
        tries.add("weight")
    khat = float("nan")
    if "log_increment" in st and R * N >= 25 and S > 2:
        inc = st["log_increment"].values[:, 1 : S - 1]  # intermediate steps: not x_K's draw, not the exact end
        pooled = np.moveaxis(inc, 1, 0).reshape(S - 2, R * N)
        k = np.atleast_1d(pareto_khat(pooled))  # NaN where constant (e.g. zero rewards)
        # k̂ judges a tail's shape, not its size: a step after which the population keeps half its
        # effective size (ESS ≥ N/2 in every run, the usual resampling threshold) was not misled, whatever
        # the shape of its increments (nearly uniform ones, or one restoring a down-weighted particle)
        costly = (ess[:, 1 : S - 1] < 0.5 * N).any(0)  # (S - 2,)
        k = np.where(costly, k, np.nan)
        if not np.all(np.isnan(k)):
            khat, at = _worst(k, lowest=False)
            if khat >= max_khat:
                problems.append(f"k̂ of the incremental weights {khat:.2f} at step {at + 1}")
                tries.add("weight")
    clipped = float(st["drift_clipped"].values.max()) if "drift_clipped" in st else 0.0
    if clipped > max_clipped:
        at = int(np.unravel_index(np.argmax(st["drift_clipped"].values), (R, S))[1])
        problems.append(f"the trust region scaled {clipped:.0%} of the drifts at step {at}")
        tries.add("drift")
    if not problems:
        judged = f"max k̂ {khat:.2f}" if not math.isnan(khat) else "ESS ≥ N/2 after every step (k̂ not judged)"
        msg = f"early min ESS {early_ess:.1f} of {N}, {judged}, max drift clipped {clipped:.0%}"
        return Verdict(name, early_ess, min_early_ess_fraction * N, True, msg, rule)
    advice = []
    if "weight" in tries:
        advice.append(
            "r(x̂_0)/α misleads at high noise: keep potential_weight='signal' (the default), delay the tilt "
            "(tempering=Exponential(0.008)), use a better value (GaussianSoftValue, LearnedSoftValue.fit) or more particles"
        )
    if "drift" in tries:
        advice.append(
            "the potential's gradient exceeds the trust region (a network's Jacobian at high noise): "
            "use proposal='prior', or raise trust_region only if the gradient is trusted"
        )
    msg = "; ".join(problems) + ". Try: " + "; ".join(advice)
    return Verdict(name, early_ess, min_early_ess_fraction * N, False, msg, rule)


def check_gibbs_mixing(dt: xr.DataTree, min_renewal: float = 0.05, min_draws: float = 5.0) -> Verdict:
    """Particle Gibbs: every level of the retained path renews, and the chain holds enough independent draws."""
    from tilted.inference.gibbs import SweepTrace

    name = "gibbs_mixing"
    rule = (
        f"every level renewed in ≥ {min_renewal:.0%} of sweeps, and (sweeps after burn-in)/τ ≥ {min_draws:g} per chain"
    )
    if "sweeps" not in dt.children:
        return Verdict(name, None, None, None, "not a particle Gibbs chain", rule)
    sw = dt["sweeps"]
    R = sw.sizes["chain"]
    trace = SweepTrace(
        renewed=torch.as_tensor(np.moveaxis(sw["renewed"].values, 0, -1)),
        moved=torch.as_tensor(np.moveaxis(sw["moved"].values, 0, -1)),
        rewards=torch.as_tensor(np.moveaxis(sw["reward"].values, 0, -1)),
        log_evidence=torch.as_tensor(np.moveaxis(sw["log_evidence"].values, 0, -1)),
        burn_in=int(sw.attrs.get("burn_in", 0)),
    )
    S = trace.renewed.shape[0] - trace.burn_in
    if trace.renewed.shape[0] < 2 or S < 2 or trace.rewards.shape[1] == 0:
        return Verdict(name, None, min_renewal, None, "fewer than 2 sweeps after burn-in: nothing to judge", rule)
    rate = trace.renewal_rate.numpy()  # (K + 1, R)
    worst_rate = float(rate.min())
    level, run = np.unravel_index(int(rate.argmin()), rate.shape)
    draws = S / trace.integrated_time().numpy()  # (R,)
    worst_draws = float(draws.min())
    passed = bool(worst_rate >= min_renewal and worst_draws >= min_draws)
    where = f" (chain {run})" if R > 1 else ""
    msg = (
        f"least renewed level k = {level}: {worst_rate:.0%} of sweeps{where}; "
        f"{worst_draws:.1f} effectively independent draws of the reward in {S} sweeps"
    )
    if not passed:
        msg += ": the chain is stuck or too short — raise N, keep ancestor_sampling=True, or run more sweeps"
    return Verdict(name, worst_rate, min_renewal, passed, msg, rule)


def _weighted_mean_se(values: np.ndarray, log_w: np.ndarray) -> tuple[float, float]:
    """Mean over runs of the self-normalised weighted means, and its s.e. (weighted sd/√ΣESS)."""
    w = np.exp(log_w - log_w.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    means = (w * values).sum(-1)
    var = (w * (values - means[:, None]) ** 2).sum(-1)
    ess = 1.0 / (w**2).sum(-1)
    return float(means.mean()), float(np.sqrt(var.mean() / ess.sum()))


def check_rewards(dt: xr.DataTree) -> list[Verdict]:
    """``reward[NAME]`` per factor (information) and the ``tilt`` check when pretrained draws exist."""
    rname = dt.attrs.get("rewards_variable", "rewards")
    parts = dt["particles"]
    r = parts[rname].values.astype(np.float64)  # (R, N, F)
    lw = parts["log_weight"].values
    factors = [str(f) for f in parts["factor"].values]
    pretrained = "prior" in dt.children
    before_all = dt["prior"][rname].values.astype(np.float64).reshape(-1, len(factors)) if pretrained else None
    out = []
    for j, name in enumerate(factors):
        after, se_after = _weighted_mean_se(r[..., j], lw)
        if pretrained:
            before, label = float(before_all[:, j].mean()), "pretrained"
        else:
            before, label = float(r[..., j].mean()), "final particles, weights ignored"
        msg = f"{label} mean {before:.4g} → tilted (weighted) mean {after:.4g} ± {se_after:.2g}"
        out.append(Verdict(f"reward[{name}]", after, before, None, msg, "information: reward before and after"))
    temps = _json_attr(dt, "temperatures")
    rule = "E_tilted[Σ r/α] ≥ E_pretrained[Σ r/α] − 3 s.e."
    if not factors:
        return out
    if not pretrained:
        out.append(Verdict("tilt", None, None, None, "no pretrained draws (pass baseline= or use --baseline)", rule))
        return out
    if not all(f in temps for f in factors):
        return out
    alpha = np.array([temps[f] for f in factors])
    ell, ell0 = (r / alpha).sum(-1), (before_all / alpha).sum(-1)
    after, se_after = _weighted_mean_se(ell, lw)
    before = float(ell0.mean())
    se_before = float(ell0.std(ddof=1) / math.sqrt(len(ell0))) if len(ell0) > 1 else 0.0
    margin = 3.0 * math.hypot(se_after, se_before)
    passed = bool(after >= before - margin)
    msg = f"Σ r/α: pretrained {before:.4g} → tilted {after:.4g} (allowed drop {margin:.2g})"
    out.append(Verdict("tilt", after, before - margin, passed, msg, rule))
    return out


def _json_attr(dt: xr.DataTree, key: str):
    import json

    try:
        return json.loads(dt.attrs.get(key, "{}"))
    except (TypeError, ValueError):
        return {}


def diagnose(
    data: Result | xr.DataTree,
    *,
    min_ess_fraction: float = 0.1,
    min_step_ess_fraction: float = 0.05,
    max_log_evidence_variance: float = 1.0,
    min_ancestors: int = 2,
) -> Diagnosis:
    """Every diagnostic of a result (or of its DataTree) with its verdict; ``.ok`` if none failed.

    See the module docstring for what each one means and the source of each rule.
    """
    dt = _as_datatree(data)
    return Diagnosis(
        [
            check_ess_final(dt, min_ess_fraction),
            check_ess_min_step(dt, min_step_ess_fraction),
            check_pareto_khat(dt),
            check_log_evidence_variance(dt, max_log_evidence_variance),
            check_distinct_ancestors(dt, min_ancestors),
            check_intermediate_potential(dt),
            check_gibbs_mixing(dt),
            *check_rewards(dt),
        ],
        datatree=dt,
    )
