"""The online loop: fit an optimistic surrogate to every query, sample the next batch from its tilt, query.

Round 0 draws an exploration batch from the pretrained model p_θ and queries the black box. Round
r ≥ 1 fits the surrogate to all finite (x, y) so far, samples ``batch_size`` points from

    p_r(x) ∝ p_θ(x) · exp(r̂⁺_r(x) / α),

where r̂⁺_r is the surrogate's optimistic value (mean plus an uncertainty bonus), with a tilted
engine (default: SMC with the gradient proposal, one draw from each of ``batch_size`` independent
runs), and queries the black box on them. p_r is the maximiser of E_p[r̂⁺_r] − α KL(p ‖ p_θ): the
temperature α is the weight of the KL term that keeps the queries where the pretrained model puts
mass, where the surrogate is trustworthy, instead of where it is most wrong (DAS, Kim et al. 2025, §5;
SEIKO, Uehara et al. 2024, which fine-tunes instead of sampling). The bonus makes untested but
plausible regions attractive (optimism in the face of uncertainty); without it the loop exploits
the surrogate's mean.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch

import tilted
from tilted._progress import progress_bar
from tilted.errors import ModelError, ShapeError, TiltedError
from tilted.online.store import Store, stored_seed
from tilted.online.surrogates import Ensemble, NeuralLinear, Surrogate


class OracleError(TiltedError, RuntimeError):
    """The black box failed on every query of a round, after its retries."""


@dataclass
class History:
    """Everything an online run did, one entry per round (round 0: the exploration batch from p_θ).

    ``x[r]`` (B_r, *event) the queried points; ``y[r]`` (B_r,) the oracle's values (NaN where a query
    failed); ``surrogates[r]`` the surrogate fitted before round r (a copy; None for round 0 and for
    rounds read back from a store); ``results[r]`` the engine's result of round r (None likewise).
    """

    x: list[torch.Tensor] = field(default_factory=list)
    y: list[torch.Tensor] = field(default_factory=list)
    surrogates: list[Surrogate | None] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    resumed: int = 0  # complete rounds read back from the store
    seed: int | None = None  # the run's seed (drawn when optimize was given None)

    @property
    def num_rounds(self) -> int:
        return len(self.y)

    @property
    def queries(self) -> torch.Tensor:
        """Cumulative number of queries after each round, (rounds,)."""
        return torch.tensor([len(y) for y in self.y]).cumsum(0)

    def best(self) -> torch.Tensor:
        """Best finite value found up to each round, (rounds,) (NaN until a query succeeds)."""
        per_round = torch.stack([_nanmax(y) for y in self.y])
        return torch.cummax(torch.nan_to_num(per_round, nan=-math.inf), 0).values.masked_fill(
            torch.cummax(torch.isfinite(per_round).long(), 0).values == 0, math.nan
        )

    def mean(self) -> torch.Tensor:
        """Mean finite value of each round's batch, (rounds,)."""
        return torch.stack(
            [
                y[torch.isfinite(y)].double().mean()
                if torch.isfinite(y).any()
                else torch.tensor(math.nan, dtype=torch.float64)
                for y in self.y
            ]
        )

    def plot(self, ax=None):
        """Best value so far and each round's batch mean (with its failed-query count) against the
        number of queries; returns the matplotlib axes."""
        import matplotlib.pyplot as plt

        ax = plt.subplots(figsize=(6, 3.5))[1] if ax is None else ax
        q = self.queries.numpy()
        ax.plot(q, self.best().numpy(), marker="o", label="best so far")
        ax.plot(q, self.mean().numpy(), marker="s", label="mean of the round's batch")
        for qi, y in zip(q, self.y, strict=True):
            failed = int((~torch.isfinite(y)).sum())
            if failed:
                ax.annotate(f"{failed} failed", (qi, float(_nanmax(y))), fontsize=7, color="crimson")
        ax.set_xlabel("queries")
        ax.set_ylabel("black-box value")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return ax

    def best_x(self) -> torch.Tensor:
        """The queried point with the largest finite value."""
        x, y = torch.cat(self.x), torch.cat(self.y)
        if not torch.isfinite(y).any():
            raise ModelError("no query has succeeded yet")
        return x[torch.nan_to_num(y.double(), nan=-math.inf).argmax()]


def _nanmax(y: torch.Tensor) -> torch.Tensor:
    ok = torch.isfinite(y)
    return y[ok].double().max() if ok.any() else torch.tensor(math.nan, dtype=torch.float64)


def query(
    oracle: Callable,
    x: torch.Tensor,
    *,
    retries: int = 2,
    chunk: int | None = None,
    y: torch.Tensor | None = None,
    answered: torch.Tensor | None = None,
    save: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The oracle's values on the batch x, float64 (B,), NaN where a query failed.

    The unanswered points (all, unless ``answered`` says otherwise; ``y`` holds the values already
    known) are asked in chunks of ``chunk`` (default: all at once); ``save(y, answered)`` is called
    after every chunk. A chunk on which the oracle raises, or returns no finite value, is asked again
    up to ``retries`` times; if it still raises, each of its points is asked once on its own (a point
    that raises gets NaN). A round without any finite value raises :class:`OracleError` and is saved
    as unanswered, so that a resumed run asks it again.
    """
    y = torch.full((len(x),), math.nan, dtype=torch.float64) if y is None else y.clone().to(torch.float64)
    answered = torch.zeros(len(x), dtype=torch.bool) if answered is None else answered.clone().bool()
    todo = (~answered).nonzero().squeeze(-1)
    size = len(todo) if chunk is None else chunk
    errors: list[str] = []
    for start in range(0, len(todo), max(size, 1)):
        idx = todo[start : start + size]
        y[idx] = _ask(oracle, x[idx.to(x.device)], retries, errors)
        answered[idx] = True
        if save is not None:
            save(y, answered)
    if not torch.isfinite(y).any():
        if save is not None:
            save(y, torch.zeros_like(answered))
        last = errors[-1] if errors else "it returned no finite value"
        raise OracleError(
            f"the oracle gave no finite value for any of the {len(x)} queries of the round, after {retries} "
            f"retries per chunk and one try per point; last failure: {last}. Check the black box and run "
            "again (with store=, every answered query is kept)"
        )
    return y


def _ask(oracle: Callable, x: torch.Tensor, retries: int, errors: list[str]) -> torch.Tensor:
    """One chunk: ``retries`` retries of the whole chunk, then one try per point if it keeps raising."""
    raised = False
    for _ in range(retries + 1):
        try:
            y = _values(oracle(x), len(x))
        except ShapeError:
            raise
        except Exception as error:  # noqa: BLE001 — a black box may fail in any way
            errors.append(f"{type(error).__name__}: {error}")
            raised = True
            continue
        if torch.isfinite(y).any():
            return y
        errors.append("it returned no finite value")
        raised = False
    y = torch.full((len(x),), math.nan, dtype=torch.float64)
    if raised and len(x) > 1:
        for i in range(len(x)):
            try:
                y[i] = _values(oracle(x[i : i + 1]), 1)[0]
            except ShapeError:
                raise
            except Exception as error:  # noqa: BLE001
                errors.append(f"{type(error).__name__}: {error}")
    return y


def _values(out, n: int) -> torch.Tensor:
    y = torch.as_tensor(out).detach().to("cpu", torch.float64)
    if y.shape != (n,):
        raise ShapeError(f"the oracle must return one value per query, shape ({n},), got {tuple(y.shape)}")
    return y


def set_optimism(surrogate: Surrogate, optimism) -> None:
    """``optimism``: None keeps the surrogate's; 0 or "off" uses its mean alone; a number > 0 is κ (Ensemble
    UCB) or β (NeuralLinear)."""
    if optimism is None:
        return
    off = optimism == "off" or optimism == 0
    if not off and not (isinstance(optimism, int | float) and optimism > 0):
        raise ModelError(f"optimism must be None, 'off', 0 or a positive number, got {optimism!r}")
    if isinstance(surrogate, Ensemble):
        surrogate.optimism, surrogate.kappa = ("mean", 0.0) if off else ("ucb", float(optimism))
    elif isinstance(surrogate, NeuralLinear):
        surrogate.beta = 0.0 if off else float(optimism)
    else:
        raise ModelError(f"optimism= works with Ensemble and NeuralLinear; set it on {type(surrogate).__name__} itself")


def default_engine(batch_size: int, differentiable: bool) -> Callable:
    """SMC with 16 particles per run, ``batch_size`` runs (one draw each); gradient proposal if possible."""
    from tilted.inference import SMC

    proposal = "gradient" if differentiable else "prior"
    return lambda model: SMC(model, 16, proposal=proposal, num_runs=batch_size)


def optimize(
    prior,
    oracle: Callable[[torch.Tensor], torch.Tensor],
    *,
    rounds: int,
    batch_size: int,
    temperature: float,
    seed: int | None = None,
    initial: int | None = None,
    surrogate: Surrogate | None = None,
    optimism=None,
    engine: Callable | None = None,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callable[[History], None] | None = None,
    store=None,
    retries: int = 2,
    chunk: int | None = None,
    progress: bool | None = None,
) -> History:
    """Query-budgeted black-box optimisation over a pretrained diffusion model (module docstring).

    Parameters
    ----------
    prior
        The pretrained process (a :mod:`tilted.distributions` sequential distribution).
    oracle
        ``oracle(x) -> (B,)``: the black box. It may raise or return NaN for some queries (recorded
        as NaN, left out of the fit); see :func:`query` for retries.
    rounds, batch_size
        Rounds including round 0, and queries per round (round 0: ``initial`` if given).
    temperature
        α > 0, the KL weight of the tilt.
    seed
        Seeds everything; every random choice of round r derives from (seed, r). ``None`` draws a seed
        (kept in ``History.seed`` and in the store, which a resume reads back).
    surrogate
        :class:`~tilted.online.Ensemble` (default, 5 heads, UCB κ = 1) or :class:`~tilted.online.NeuralLinear`;
        ``features`` is given to the default surrogate.
    optimism
        None (the surrogate's), 0 / "off" (its mean), or κ / β.
    engine
        ``engine(model) -> engine`` whose ``run(seed=...)`` returns a result of ``batch_size`` runs
        (``num_runs=batch_size``); one draw is taken per run. Default :func:`default_engine`.
    callback
        Called with the history after every round (progress reports, plots, early stopping by raising).
    store
        A folder (:class:`~tilted.online.Store`): every round's queries are written before the oracle is
        called and its values after every oracle call; a run started again with the same folder and
        settings resumes, asking only what was not answered. The first new round after a resume fits
        its surrogate cold (the warm-start weights are not stored); with ``warm_start=False`` a resumed
        run is identical to an uninterrupted one.
    retries, chunk
        See :func:`query`: retries of a failing oracle call, and queries per oracle call (default: the
        whole batch in one call; ``chunk=1`` saves after every single query).
    progress
        A progress bar over rounds with the best value so far: ``False`` none, ``True`` always, ``None``
        once the loop has lasted 2 s (:mod:`tilted._progress`).
    """
    for name, value, low in (("rounds", rounds, 1), ("batch_size", batch_size, 1), ("retries", retries, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ModelError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ModelError(f"chunk must be None or a positive integer (queries per oracle call), got {chunk!r}")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise ModelError(f"temperature must be a finite number > 0 (the KL weight), got {temperature!r}")
    initial = batch_size if initial is None else initial
    if isinstance(initial, bool) or not isinstance(initial, int) or initial < 2:
        raise ModelError(f"initial must be an integer ≥ 2 (the surrogate needs two values), got {initial!r}")
    surrogate = Ensemble(features=features) if surrogate is None else surrogate
    if not isinstance(surrogate, Surrogate):
        raise ModelError(
            f"surrogate must be a tilted.online Surrogate (Ensemble, NeuralLinear), got {type(surrogate).__name__}"
        )
    set_optimism(surrogate, optimism)
    engine = default_engine(batch_size, surrogate.differentiable) if engine is None else engine
    if seed is None and store is not None:
        seed = stored_seed(store)
    seed = random.randrange(2**31) if seed is None else int(seed)
    settings = {"seed": seed, "batch_size": batch_size, "initial": initial, "temperature": float(temperature)}
    store = Store(store, settings) if store is not None else None
    event_dim = len(prior.event_shape)
    history = History(seed=seed)
    bar = progress_bar(range(rounds), progress=progress, desc="online")
    for r in bar:
        base = seed * 1_000_003 + 7919 * r  # every random choice of round r derives from (seed, r)
        stored = store.load(r) if store is not None else None
        fitted, result = None, None
        if stored is not None:
            x, y, answered = stored
            history.resumed += bool(answered.all())
        else:
            if r == 0:
                with torch.no_grad():
                    x = prior.sample((initial,), generator=torch.Generator(prior.device).manual_seed(base))
            else:
                past_x, past_y = torch.cat(history.x), torch.cat(history.y)
                gen = torch.Generator().manual_seed(base)
                surrogate.fit(past_x.to(prior.device), past_y.to(prior.device), event_dim=event_dim, generator=gen)
                fitted = _snapshot(surrogate)
                result = engine(_tilted_model(prior, surrogate, temperature)).run(seed=base + 1)
                x = _one_per_run(result, base + 2, batch_size)
            x = x.detach().cpu()
            y, answered = torch.full((len(x),), math.nan, dtype=torch.float64), torch.zeros(len(x), dtype=torch.bool)
            if store is not None:
                store.save(r, x, y, answered)
        if not answered.all():
            save = None if store is None else (lambda y_, a_, r=r, x=x: store.save(r, x, y_, a_))
            y = query(oracle, x.to(prior.device), retries=retries, chunk=chunk, y=y, answered=answered, save=save)
        history.x.append(x)
        history.y.append(y)
        history.surrogates.append(fitted)
        history.results.append(result)
        bar.set_postfix(best=f"{float(history.best()[-1]):.4g}", failed=int((~torch.isfinite(y)).sum()))
        if callback is not None:
            callback(history)
    return history


def _one_per_run(result, seed: int, batch_size: int) -> torch.Tensor:
    """One equally weighted draw from each run of the engine's result: (batch_size, *event)."""
    draws = result.sample(1, seed=seed)[result.site]
    x = draws[:, 0] if result.batched else draws
    if x.shape[0] != batch_size:
        raise ShapeError(
            f"the engine returned {x.shape[0]} runs; build it with num_runs={batch_size} (one draw per run)"
        )
    return x


def _tilted_model(prior, surrogate, temperature):
    def model():
        x = pyro.sample("x", prior)
        tilted.factor("surrogate", surrogate, x, temperature=temperature)

    return model


def _snapshot(surrogate: Surrogate) -> Surrogate:
    features, surrogate.features = surrogate.features, None  # a frozen encoder is shared, not copied
    try:
        snap = copy.deepcopy(surrogate)
    finally:
        surrogate.features = features
    snap.features = features
    return snap
