"""Device placement: engines create every tensor on the process's device (checked without a GPU).

A CUDA run cannot be made here, so the check is structural: while an engine runs, a torch function
mode records every call of a tensor factory (``torch.zeros``, ``randn``, ``arange``, …) made from the
library's engine and process code without a ``device`` argument. Such a call makes a CPU tensor,
which on a GPU run either fails (a device mismatch) or copies between devices at every step.
"""

from pathlib import Path

import pyro
import pytest
import torch
from test_groups import grouped_process
from test_smc import gaussian_process, make_model
from torch.overrides import TorchFunctionMode

import tilted
from tilted.distributions import MaskedDiffusion, TableReward, TabularSequences
from tilted.distributions.process import module_device
from tilted.inference import (
    DPS,
    SMC,
    SVDD,
    BeamSearch,
    BestOfN,
    GaussianSoftValue,
    Importance,
    NestedIS,
    TaylorGuidance,
)
from tilted.rewards import Quadratic

FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.rand, torch.randn, torch.randint}
ROOT = Path(__import__("tilted").__file__).parent
#: code that runs once per run on CPU by design (schedules, temperatures: moved to the device once in _setup)
EXEMPT = {ROOT / "tempering.py", ROOT / "plan.py", ROOT / "inference" / "result.py"}


class DeviceLessFactories(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            import inspect

            caller = inspect.currentframe().f_back
            path = Path(caller.f_code.co_filename)
            if ROOT in path.parents and path not in EXEMPT:
                self.calls.append(f"{path.relative_to(ROOT)}:{caller.f_lineno} {func.__name__}")
        return func(*args, **kwargs)


ENGINES = {
    "smc-gradient": lambda m: SMC(m, 4, proposal="gradient", num_runs=2),
    "smc-ssp": lambda m: SMC(m, 4, resampler="ssp", ess_threshold=1.0),
    "smc-stratified": lambda m: SMC(m, 4, resampler="stratified", ess_threshold=1.0),
    "importance": lambda m: Importance(m, 4),
    "nested": lambda m: NestedIS(m, 4, num_candidates=2),
    "svdd": lambda m: SVDD(m, 4, num_candidates=2),
    "best-of-n": lambda m: BestOfN(m, 2, num_candidates=2),
    "dps": lambda m: DPS(m, 4),
    "gaussian-soft-value": lambda m: SMC(m, 4, proposal="gradient", potential=GaussianSoftValue(m, num_draws=2)),
}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engines_create_no_device_less_tensors(name):
    process = grouped_process(num_steps=4) if name != "gaussian-soft-value" else gaussian_process([0.0, 1.0], 0.5, 4)
    model = make_model(process, Quadratic(A=-0.3 * torch.eye(2), b=[0.5, 1.0]), 0.5)
    with DeviceLessFactories() as mode:
        ENGINES[name](model).run(seed=0)
    assert not mode.calls, f"tensor factories without device=: {sorted(set(mode.calls))}"


MASKED = {
    "smc-taylor": lambda m: SMC(m, 4, proposal="gradient", ess_threshold=1.0),
    "nested": lambda m: NestedIS(m, 4, num_candidates=2),
    "svdd": lambda m: SVDD(m, 4, num_candidates=2),
    "beam": lambda m: BeamSearch(m, 2, num_candidates=2),
    "taylor-guidance": lambda m: TaylorGuidance(m, 4),
}


@pytest.mark.parametrize("name", sorted(MASKED))
def test_masked_engines_create_no_device_less_tensors(name):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(27, generator=g, dtype=torch.float64)
    process = MaskedDiffusion(data=TabularSequences((probs / probs.sum()).reshape(3, 3, 3)), num_steps=3)
    table = TableReward(torch.randn(3, 3, 3, generator=g, dtype=torch.float64))

    def model():
        x = pyro.sample("x", process)
        tilted.factor("r", table, x, temperature=0.5)

    with DeviceLessFactories() as mode:
        MASKED[name](model).run(seed=0)
    assert not mode.calls, f"tensor factories without device=: {sorted(set(mode.calls))}"


def test_process_device_follows_the_denoiser():
    process = grouped_process()
    assert process.device == torch.device("cpu") == module_device(process.denoiser)
    assert module_device(torch.nn.Identity()) == torch.device("cpu")
    assert process.draw_initial((2,)).device == process.device
