"""Masked discrete diffusion, table data laws and the chain's exact law by enumeration.

Monte-Carlo comparisons use n independent draws of the chain and the bound

    TV(p̂_n, p) ≤ ½ Σ_s √(p_s(1 − p_s)/n) + √(log(1/δ)/(2n))        with probability ≥ 1 − δ:

E|p̂_s − p_s| ≤ √Var(p̂_s) = √(p_s(1 − p_s)/n) (Jensen) bounds the mean of TV, and TV moves by at
most 1/n when one draw changes, so McDiarmid's inequality gives P(TV ≥ E TV + t) ≤ exp(−2nt²).
We take δ = 10⁻⁴ per comparison. The bound is rigorous for iid draws (no normal approximation).
"""

import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tilted
from tilted.distributions import MaskedDiffusion, TableReward, TabularSequences
from tilted.distributions.masked import LOGLINEAR_EPS, masking_schedule
from tilted.distributions.tabular import all_sequences, sequence_index
from tilted.errors import ModelError, ShapeError
from tilted.reference import MaskedChain, masked_chain_law, tilt_table, total_variation, weighted_law

F64 = torch.float64


def random_table(V, L, seed, power=2.0, zeros=0.0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand((V,) * L, generator=g, dtype=F64) ** power
    if zeros:
        p = p * (torch.rand(p.shape, generator=g, dtype=F64) >= zeros)
        p.view(-1)[0] += 0.1  # keep a positive sum
    return p


def tv_bound(p, n, delta=1e-4):
    return float(0.5 * (p * (1 - p) / n).sqrt().sum() + math.sqrt(math.log(1 / delta) / (2 * n)))


def brute_posterior(table, x, V):
    """p(x_0,i = j | visible tokens of x) by looping over every sequence."""
    L = table.ndim
    out = torch.zeros(L, V, dtype=F64)
    for s in itertools.product(range(V), repeat=L):
        if all(x[i] == V or x[i] == s[i] for i in range(L)):
            for i in range(L):
                out[i, s[i]] += table[s]
    return out / out.sum(-1, keepdim=True)


# -- schedules ---------------------------------------------------------------------------------------
def test_schedules():
    K = 5
    t = torch.arange(K + 1, dtype=F64) / K
    assert torch.allclose(masking_schedule("linear", K), 1 - t)
    loglinear = 1 - (1 - LOGLINEAR_EPS) * t
    loglinear[-1] = 0.0
    assert torch.allclose(masking_schedule("loglinear", K), loglinear)
    cosine = masking_schedule("cosine", K)
    assert torch.allclose(cosine[1:-1], 1 - torch.cos(math.pi / 2 * (1 - t[1:-1])))
    for a in (masking_schedule(s, K) for s in ("linear", "loglinear", "cosine")):
        assert a[0] == 1 and a[-1] == 0 and (a[1:] <= a[:-1]).all()
    assert torch.allclose(masking_schedule(lambda t: (1 - t) ** 2, K), (1 - t) ** 2)
    custom = torch.tensor([1.0, 0.5, 0.5, 0.2, 0.1, 0.0])
    assert torch.equal(masking_schedule(custom, K), custom.to(F64))
    for bad in ("nope", torch.tensor([1.0, 0.2, 0.5, 0.2, 0.1, 0.0]), torch.ones(3), lambda t: t * 0 + 1):
        with pytest.raises(ModelError):
            masking_schedule(bad, K)


def test_unmask_probability_and_final_step():
    proc = MaskedDiffusion(data=TabularSequences(random_table(3, 2, 0)), num_steps=4, schedule="cosine")
    a = proc.alphas
    for k in range(1, 5):
        assert proc.unmask_probability(k) == pytest.approx(float((a[k - 1] - a[k]) / (1 - a[k])))
    assert proc.unmask_probability(1) == 1.0  # (α_0 − α_1)/(1 − α_1) with α_0 = 1
    states = all_sequences(4, 2)  # every state, masks included
    probs = proc.transition_probs(states, 1)
    assert (probs[..., 3] == 0).all()  # no position stays masked at the last step
    x0 = proc.draw_transition(states, 1, torch.Generator().manual_seed(0))
    assert (x0 < 3).all()


# -- the process ---------------------------------------------------------------------------------------
def test_process_basics():
    data = TabularSequences(random_table(3, 4, 1))
    proc = MaskedDiffusion(data=data, num_steps=6)
    assert proc.event_shape == (4,) and proc.mask_id == 3 and proc.length == 4 and proc.vocab_size == 3
    ph = proc.placeholder()
    assert ph.dtype == torch.long and ph.shape == (4,)
    x = proc.draw_initial((2, 5))
    assert x.shape == (2, 5, 4) and (x == 3).all() and x.dtype == torch.long
    assert proc.initial().log_prob(torch.full((4,), 3)) == 0
    assert proc.initial().log_prob(torch.tensor([0, 3, 3, 3])) == -math.inf
    s = proc.sample((7,), generator=torch.Generator().manual_seed(0))
    assert s.shape == (7, 4) and s.dtype == torch.long and ((s >= 0) & (s < 3)).all()
    assert proc.support.check(s).all() and not proc.support.check(torch.tensor(3))
    assert torch.equal(proc.timesteps, torch.tensor([6, 5, 4, 3, 2, 1], dtype=F64) / 6)
    assert "MaskedDiffusion" in repr(proc) and "TabularSequences" in repr(data)
    with pytest.raises(ModelError, match="exactly one"):
        MaskedDiffusion(num_steps=3, length=2, vocab_size=2)
    with pytest.raises(ModelError, match="required"):
        MaskedDiffusion(lambda x, t: x, num_steps=3)
    with pytest.raises(ShapeError):
        MaskedDiffusion(data=data, length=5)
    with pytest.raises(ModelError):
        MaskedDiffusion(data=data, num_steps=0)


def test_pyro_runs_the_model_as_written():
    table = random_table(2, 3, 2)
    proc = MaskedDiffusion(data=TabularSequences(table), num_steps=3)
    reward = TableReward(torch.arange(8.0).reshape(2, 2, 2))

    def model():
        x = pyro.sample("x", proc)
        tilted.factor("r", reward, x, temperature=2.0)

    pyro.set_rng_seed(0)
    trace = poutine.trace(model).get_trace()
    x = trace.nodes["x"]["value"]
    assert x.shape == (3,) and x.dtype == torch.long
    assert torch.allclose(trace.nodes["r"]["fn"].log_factor, reward(x) / 2.0)


def test_exact_posterior_and_carry_over():
    V, L = 3, 3
    table = random_table(V, L, 3, zeros=0.3)
    data = TabularSequences(table)
    proc = MaskedDiffusion(data=data, num_steps=4)
    for x in all_sequences(V + 1, L):
        post = proc.predict(x, 2)
        assert torch.allclose(post.sum(-1), torch.ones(L, dtype=F64))
        visible = x < V
        assert torch.equal(post[visible], torch.nn.functional.one_hot(x[visible], V).to(F64))
        consistent = sum(
            float(table[s]) for s in itertools.product(range(V), repeat=L) if all(x[i] in (V, s[i]) for i in range(L))
        )
        if consistent > 0:
            assert torch.allclose(post, brute_posterior(table, x.tolist(), V))
        else:  # fallback: the data's per-position marginals at masked positions
            assert torch.allclose(post[~visible], data.marginals[~visible])
    batch = all_sequences(V + 1, L).reshape(4, 16, L)
    assert torch.allclose(proc.predict(batch, 1).reshape(-1, L, V), proc.predict(batch.reshape(-1, L), 3))


def test_table_law_helpers():
    table = random_table(3, 2, 4)
    data = TabularSequences(3 * table)
    assert torch.allclose(data.probs, table / table.sum())
    seqs = all_sequences(3, 2)
    assert torch.equal(sequence_index(seqs, 3), torch.arange(9))
    assert torch.allclose(data.log_prob(seqs).exp(), data.probs.reshape(-1))
    draws = data.sample(20000, torch.Generator().manual_seed(0))
    emp = weighted_law(draws, torch.zeros(20000), 3)
    assert float(total_variation(emp, data.probs.reshape(-1))) <= tv_bound(data.probs.reshape(-1), 20000)
    for bad in (torch.ones(2, 3), -torch.ones(2, 2), torch.zeros(2, 2)):
        with pytest.raises((ModelError, ShapeError)):
            TabularSequences(bad)
    with pytest.raises(ShapeError):
        data.posterior(torch.zeros(3, dtype=torch.long))


def test_transition_is_an_exact_product_of_categoricals():
    V, L, K = 2, 3, 4
    proc = MaskedDiffusion(data=TabularSequences(random_table(V, L, 5)), num_steps=K, schedule="cosine")
    states = all_sequences(V + 1, L)
    for k in range(1, K + 1):
        u = proc.unmask_probability(k)
        law = proc.transition(states, k)
        for x in states[::5]:
            post = proc.predict(x, k)
            lp = proc.transition(x, k).log_prob(states)  # every possible next state
            assert torch.allclose(lp.exp().sum(), torch.tensor(1.0, dtype=F64))
            for y, got in zip(states, lp, strict=True):
                want = 1.0
                for i in range(L):
                    if x[i] < V:
                        want *= float(y[i] == x[i])
                    else:
                        want *= (1 - u) if y[i] == V else u * float(post[i, y[i]])
                assert math.isclose(float(got.exp()), want, rel_tol=1e-9, abs_tol=1e-300)
        assert law.batch_shape == (states.shape[0],) and law.event_shape == (L,)


def test_draw_transition_matches_its_law():
    """n = 40000 draws of x_{k-1} from one x_k, against the exact transition law (TV bound above)."""
    V, L, K, n = 3, 3, 5, 40000
    proc = MaskedDiffusion(data=TabularSequences(random_table(V, L, 6)), num_steps=K)
    x = torch.tensor([3, 1, 3])
    states = all_sequences(V + 1, L)
    exact = proc.transition(x, 3).log_prob(states).exp()
    draws = proc.draw_transition(x.expand(n, L), 3, torch.Generator().manual_seed(1))
    emp = weighted_law(draws, torch.zeros(n), V + 1)
    assert float(total_variation(emp, exact)) <= tv_bound(exact, n)


def test_network_denoiser():
    V, L, K = 3, 2, 4
    seen = []

    def denoiser(x, t, bias=0.0):
        seen.append(t.clone())
        assert x.dtype == torch.long and x.shape[-1] == L
        return torch.zeros(x.shape + (V,)) + bias * torch.arange(V)

    proc = MaskedDiffusion(denoiser, length=L, vocab_size=V, num_steps=K, context={"bias": 1.0})
    x = torch.tensor([[3, 0], [3, 3]])
    out = proc.predict(x, 3)
    assert torch.allclose(seen[-1], torch.full((2,), 3 / 4))
    soft = torch.softmax(torch.arange(V, dtype=F64), 0)
    assert torch.allclose(out[0, 0], soft) and torch.equal(out[0, 1], torch.tensor([1.0, 0, 0], dtype=F64))
    s = proc.sample((5,), generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, L) and (s < V).all()

    class Output:
        def __init__(self, logits):
            self.logits = logits

    wrapped = MaskedDiffusion(lambda x, t: Output(torch.zeros(x.shape + (V,))), length=L, vocab_size=V, num_steps=2)
    assert torch.allclose(wrapped.predict(x, 1)[1], torch.full((L, V), 1 / 3, dtype=F64))
    bad = MaskedDiffusion(lambda x, t: torch.zeros(x.shape + (V + 1,)), length=L, vocab_size=V, num_steps=2)
    with pytest.raises(ShapeError, match="logits"):
        bad.predict(x, 1)
    with pytest.raises(ShapeError, match="long"):
        proc.predict(x.float(), 1)
    with pytest.raises(ShapeError):
        proc.predict(torch.zeros(2, 3, dtype=torch.long), 1)


def test_table_reward_lookup_and_multilinear_extension():
    V, L = 3, 3
    g = torch.Generator().manual_seed(7)
    table = torch.randn((V,) * L, generator=g, dtype=F64)
    r = TableReward(table)
    seqs = all_sequences(V, L)
    assert torch.allclose(r(seqs), table.reshape(-1))
    onehot = torch.nn.functional.one_hot(seqs, V).to(F64)
    assert torch.allclose(r(onehot), table.reshape(-1))
    P = torch.softmax(torch.randn(5, L, V, generator=g, dtype=F64), -1).requires_grad_(True)
    value = r(P)
    # r(P) = E[r(S)] with S_i ~ P_i independent, and ∂r/∂P_ij = E[r(S) | S_i = j]
    weights = torch.stack([P[:, i, seqs[:, i]] for i in range(L)]).prod(0)  # (5, S)
    assert torch.allclose(value, weights @ table.reshape(-1))
    (grad,) = torch.autograd.grad(value.sum(), P)
    for i, j in itertools.product(range(L), range(V)):
        rows = seqs[:, i] == j
        others = torch.stack([P[:, m, seqs[rows, m]] for m in range(L) if m != i]).prod(0)
        assert torch.allclose(grad[:, i, j], (others @ table.reshape(-1)[rows]).detach())
    with pytest.raises(ShapeError):
        r(torch.zeros(2, L, V + 1))
    with pytest.raises(ShapeError):
        r(torch.full((2, L), V))


# -- the chain's exact law ------------------------------------------------------------------------------
def test_chain_law_special_cases():
    V = 3
    # one position: the chain draws x_0 from the exact posterior, i.e. the data law, for any K
    table = random_table(V, 1, 8)
    for K in (1, 3):
        law = masked_chain_law(MaskedDiffusion(data=TabularSequences(table), num_steps=K))
        assert torch.allclose(law, table / table.sum())
    # one step: every position is unmasked at once, independently: the product of the data marginals
    table = random_table(V, 3, 9)
    data = TabularSequences(table)
    law = masked_chain_law(MaskedDiffusion(data=data, num_steps=1))
    m = data.marginals
    assert torch.allclose(law, torch.einsum("a,b,c->abc", m[0], m[1], m[2]).reshape(-1))
    # perfectly correlated pair {00, 11}: one step gives 01 and 10 a quarter each; more steps less
    pair = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    for K, off in ((1, 0.5), (2, 0.25), (4, 0.125)):
        law = masked_chain_law(MaskedDiffusion(data=TabularSequences(pair), num_steps=K))
        # each position's unmasking step is uniform over the K steps (linear schedule), independently; the
        # pair is drawn inconsistently (01 or 10, probability ½) only when both fill at the same step (1/K)
        assert math.isclose(float(law[1] + law[2]), off, rel_tol=1e-12)


def test_chain_tends_to_the_data_law():
    table = random_table(3, 3, 10, power=4)
    data = TabularSequences(table)
    tv = [
        float(total_variation(masked_chain_law(MaskedDiffusion(data=data, num_steps=K)), data.probs.reshape(-1)))
        for K in (1, 2, 4, 8, 16, 64)
    ]
    assert all(a > b for a, b in zip(tv, tv[1:], strict=False)) and tv[-1] < 0.1 * tv[0]


def test_chain_marginals_mask_fraction():
    """At level k each position is masked with probability 1 − α_k, whatever the denoiser."""
    V, L, K = 2, 3, 5
    proc = MaskedDiffusion(data=TabularSequences(random_table(V, L, 11)), num_steps=K, schedule="cosine")
    chain = MaskedChain(proc)
    masks = (chain.states == V).sum(-1).to(F64)
    for k in range(K + 1):
        assert math.isclose(float(chain.marginal(k) @ masks), L * (1 - float(proc.alphas[k])), abs_tol=1e-12)
        assert math.isclose(float(chain.marginal(k).sum()), 1.0, abs_tol=1e-12)


@st.composite
def small_chains(draw):
    V, L = draw(st.integers(2, 4)), draw(st.integers(1, 4))
    K = draw(st.integers(1, 6))
    schedule = draw(st.sampled_from(["linear", "loglinear", "cosine"]))
    seed = draw(st.integers(0, 10**6))
    zeros = draw(st.sampled_from([0.0, 0.4]))
    return V, L, K, schedule, seed, zeros


@given(problem=small_chains())
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_enumeration_matches_monte_carlo(problem):
    """n = 20000 ancestral draws of the chain against MaskedChain.law (TV bound in the module docstring)."""
    V, L, K, schedule, seed, zeros = problem
    n = 20000
    proc = MaskedDiffusion(data=TabularSequences(random_table(V, L, seed, zeros=zeros)), num_steps=K, schedule=schedule)
    law = MaskedChain(proc).law()
    assert math.isclose(float(law.sum()), 1.0, abs_tol=1e-12)
    draws = proc.sample((n,), generator=torch.Generator().manual_seed(seed))
    emp = weighted_law(draws, torch.zeros(n), V)
    assert float(total_variation(emp, law)) <= tv_bound(law, n)


def test_tilted_target_and_soft_values():
    V, L, K, alpha = 3, 2, 3, 0.7
    proc = MaskedDiffusion(data=TabularSequences(random_table(V, L, 12)), num_steps=K)
    chain = MaskedChain(proc)
    r = torch.randn((V,) * L, generator=torch.Generator().manual_seed(0), dtype=F64)
    reward = TableReward(r)
    probs, log_z = chain.tilted(reward, alpha)
    law = chain.law()
    assert torch.allclose(probs, law * (r.reshape(-1) / alpha).exp() / (law * (r.reshape(-1) / alpha).exp()).sum())
    assert math.isclose(float(log_z), math.log(float((law * (r.reshape(-1) / alpha).exp()).sum())), rel_tol=1e-12)
    assert torch.allclose(chain.tilted(r, alpha)[0], probs)  # a table works as well as a callable
    values = chain.soft_values(reward, alpha)
    all_mask = chain.states.shape[0] - 1
    assert math.isclose(float(values[K][all_mask]), float(log_z), rel_tol=1e-12)
    clean = sequence_index(chain.sequences, V + 1)
    assert torch.allclose(values[0][clean], r.reshape(-1) / alpha)
    twist = chain.twist(reward, alpha)
    assert torch.allclose(twist(chain.states, 2), values[2])
    # the soft value is a martingale: E[exp v_{k-1}(x_{k-1}) | x_k] = exp v_k(x_k)
    for k in range(1, K + 1):
        assert torch.allclose(chain.transition(k) @ values[k - 1].exp(), values[k].exp())
    p, lz = tilt_table(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 1.0, 5.0]), 1.0)
    assert torch.allclose(p, torch.tensor([1, math.e, 0], dtype=F64) / (1 + math.e))
    assert math.isclose(float(lz), math.log((1 + math.e) / 2))
    with pytest.raises(ModelError):
        tilt_table(p, p, 0.0)
    with pytest.raises(ShapeError):
        chain.tilted(torch.zeros(5), 1.0)


def test_chain_refuses_what_it_cannot_enumerate():
    with pytest.raises(ModelError, match="too many"):
        MaskedChain(MaskedDiffusion(lambda x, t: torch.zeros(x.shape + (4,)), length=6, vocab_size=4, num_steps=2))
    with pytest.raises(ModelError):
        MaskedChain("not a process")
