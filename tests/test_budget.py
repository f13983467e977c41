"""Budgets: every sized engine predicts its cost exactly and sizes N to fit (tilted.inference.budget).

Exact checks: after a run, ``result.counts`` equals N·R·``engine.cost(plan)`` + ``engine.fixed_cost``
(SMC family) for every engine, Gaussian and masked; a budget one call short of N + 1 particles gives N;
a reward budget binds like a denoiser one; too small a budget raises BudgetError.
"""

import pytest
from test_discrete_smc import make_model as masked_model
from test_discrete_smc import process as masked_process
from test_discrete_smc import table
from test_smc import gaussian_process, make_model

from tilted.distributions import TableReward
from tilted.errors import ModelError
from tilted.inference import (
    DPS,
    MPGD,
    SMC,
    SVDD,
    BeamSearch,
    BestOfN,
    Budget,
    BudgetError,
    FreeDoM,
    Importance,
    NestedIS,
    TaylorGuidance,
)
from tilted.inference.result import Counts
from tilted.plan import read_plan
from tilted.rewards import Quadratic

ENGINES = {
    "smc": (lambda m, n, **kw: SMC(m, n, **kw), "both"),
    "smc-gradient-max": (lambda m, n, **kw: SMC(m, n, proposal="gradient", potential="max", **kw), "both"),
    "smc-argmax": (lambda m, n, **kw: SMC(m, n, fill="argmax", **kw), "both"),
    "importance": (lambda m, n, **kw: Importance(m, n, **kw), "both"),
    "nested": (lambda m, n, **kw: NestedIS(m, n, num_candidates=3, **kw), "both"),
    "svdd": (lambda m, n, **kw: SVDD(m, n, num_candidates=3, **kw), "both"),
    "beam": (lambda m, n, **kw: BeamSearch(m, n, num_candidates=2, **kw), "both"),
    "best-of-n": (lambda m, n, **kw: BestOfN(m, n, num_candidates=3, **kw), "both"),
    "dps": (lambda m, n, **kw: DPS(m, n, **kw), "gaussian"),
    "mpgd": (lambda m, n, **kw: MPGD(m, n, **kw), "gaussian"),
    "freedom": (lambda m, n, **kw: FreeDoM(m, n, recurrence=3, travel_window=(0.3, 0.7), **kw), "gaussian"),
    "taylor-guidance": (lambda m, n, **kw: TaylorGuidance(m, n, **kw), "masked"),
}
CASES = [
    (name, masked)
    for name, (_, kind) in ENGINES.items()
    for masked in (False, True)
    if kind in ("both", "masked" if masked else "gaussian")
]


def model_for(masked: bool):
    if masked:
        proc = masked_process(3, 3, 4, 0)
        return masked_model(proc, TableReward(table(3, 3, 1, -1, 1)), 0.5)
    process = gaussian_process([1.0, -1.0], 0.5, num_steps=6)
    return make_model(process, Quadratic.linear([1.0, 0.5]), 0.5)


def total(engine, plan, n):
    fixed = engine.fixed_cost(plan) if hasattr(engine, "fixed_cost") else Counts()
    return engine.cost(plan).scaled(n) + fixed


@pytest.mark.parametrize("name, masked", CASES)
def test_cost_is_exact_and_the_budget_sizes_the_particles(name, masked):
    make = ENGINES[name][0]
    model = model_for(masked)
    plan = read_plan(model)
    engine = make(model, 5, num_runs=3)
    res = engine.run(seed=0)
    assert res.counts == total(engine, plan, 15)
    per = engine.cost(plan)
    budget = res.counts.denoiser_calls + 2 * 3 * per.denoiser_calls + 1  # room for N = 7, not 8
    sized = make(model, None, num_runs=3, budget=budget).run(seed=0)
    assert sized.num_particles == 7 and sized.counts.denoiser_calls <= budget
    assert sized.config["budget"] == {"denoiser_calls": budget, "reward_calls": None}
    capped = make(model, 100, num_runs=3, budget=Budget(reward_calls=res.counts.reward_calls)).run(seed=0)
    assert capped.num_particles == 5 and capped.counts.reward_calls <= res.counts.reward_calls
    with pytest.raises(BudgetError, match="raise the budget"):
        make(model, None, num_runs=3, budget=2).run(seed=0)


def test_budget_arguments():
    model = model_for(False)
    with pytest.raises(ModelError, match="positive integer"):
        SMC(model, budget=Budget(denoiser_calls=0))
    with pytest.raises(ModelError, match="budget keys"):
        SMC(model, budget={"calls": 10})
    with pytest.raises(ModelError, match="needs a limit"):
        Budget()
    with pytest.raises(ValueError, match="give num_particles"):
        SMC(model)
    with pytest.raises(ModelError, match="give num_particles"):
        SVDD(model)
    res = SMC(model, budget={"denoiser_calls": 600, "reward_calls": 300}).run(seed=0)
    assert res.counts.denoiser_calls <= 600 and res.counts.reward_calls <= 300
