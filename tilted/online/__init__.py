"""Online black-box optimisation: query-budgeted rounds with an optimistic surrogate (docs/online.md).

``optimize(prior, oracle, rounds=…, batch_size=…, temperature=…)`` alternates: fit a surrogate with
an uncertainty estimate to every query so far, sample the next batch from
p_θ(x) · exp(r̂⁺(x)/α) with a tilted engine, query the black box on it.
"""

from tilted.online.loop import History, OracleError, optimize
from tilted.online.store import Store
from tilted.online.surrogates import Ensemble, NeuralLinear, Surrogate

__all__ = ["Ensemble", "History", "NeuralLinear", "OracleError", "Store", "Surrogate", "optimize"]
