"""Compute budgets: how many denoiser and reward calls an engine may spend.

Every engine takes ``budget=``: an int (denoiser calls) or a :class:`Budget` with a limit on
denoiser calls, reward calls or both, counted as in :class:`~tilted.inference.result.Counts` (a
batch of B particles counts B) and summed over all runs of the call. An engine uses it in one of
two ways, and says which in its docstring:

- **sized** (samplers whose work is fixed by their settings: SMC, importance sampling, guidance,
  SVDD, beam search, best-of-N, nested IS): the engine knows its cost per particle exactly
  (``engine.cost(plan)``), and ``budget`` replaces ``num_particles`` by the largest N whose total
  cost fits; particle Gibbs sizes its number of sweeps the same way;
- **anytime** (search engines: tree search, evolutionary and bandit noise search): the engine
  runs until the next unit of work (an iteration, a generation) would overrun the budget.

Either way ``result.counts`` reports what was spent, which never exceeds the budget, and
``result.config["budget"]`` what was allowed. A budget too small for a single particle (or a
single iteration) raises :class:`BudgetError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tilted.errors import ModelError
from tilted.inference.result import Counts


class BudgetError(ModelError):
    """A budget too small for the least work an engine can do."""


@dataclass(frozen=True)
class Budget:
    """Limits on denoiser calls and reward calls (``None``: unlimited)."""

    denoiser_calls: int | None = None
    reward_calls: int | None = None

    def __post_init__(self):
        for name in ("denoiser_calls", "reward_calls"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ModelError(f"budget {name} must be a positive integer or None, got {v!r}")
        if self.denoiser_calls is None and self.reward_calls is None:
            raise ModelError("a Budget needs a limit on denoiser_calls, reward_calls or both")

    def allows(self, spent: Counts, more: Counts | None = None) -> bool:
        """Whether ``spent`` (plus ``more``) stays within every limit."""
        for name in ("denoiser_calls", "reward_calls"):
            limit = getattr(self, name)
            total = getattr(spent, name) + (getattr(more, name) if more is not None else 0)
            if limit is not None and total > limit:
                return False
        return True

    def as_dict(self) -> dict[str, int | None]:
        return {"denoiser_calls": self.denoiser_calls, "reward_calls": self.reward_calls}


def as_budget(budget: int | Budget | dict | None) -> Budget | None:
    """``None``, an int of denoiser calls, a dict of limits or a :class:`Budget`, as a :class:`Budget`."""
    if budget is None or isinstance(budget, Budget):
        return budget
    if isinstance(budget, dict):
        unknown = set(budget) - {"denoiser_calls", "reward_calls"}
        if unknown:
            raise ModelError(f"budget keys are 'denoiser_calls' and 'reward_calls', got {sorted(unknown)}")
        return Budget(**budget)
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ModelError(f"budget must be an int of denoiser calls, a dict or a Budget, got {budget!r}")
    return Budget(denoiser_calls=budget)


def sized(budget: Budget, cost: Counts, what: str, fixed: Counts | None = None) -> int:
    """The largest n ≥ 1 with ``fixed + n·cost`` within ``budget``, or :class:`BudgetError` naming ``what``."""
    fixed = fixed or Counts()
    fit = math.inf
    for name in ("denoiser_calls", "reward_calls"):
        limit, per = getattr(budget, name), getattr(cost, name)
        if limit is not None and per > 0:
            fit = min(fit, (limit - getattr(fixed, name)) // per)
    if fit == math.inf:
        raise BudgetError(f"a {what} costs nothing that the budget {budget.as_dict()} limits; limit another count")
    if fit < 1:
        raise BudgetError(
            f"the budget {budget.as_dict()} does not cover one {what} (it costs {cost.as_dict()}"
            f"{' on top of ' + str(fixed.as_dict()) if any(vars(fixed).values()) else ''}); raise the budget"
        )
    return int(fit)
