"""Every sampler of the registry runs our sampler contract and Optuna's own sampler suites
(`optuna.testing.pytest_samplers`), on in-memory studies; every pruner and Ray Tune scheduler
runs the early-stopping contract, in process."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)

from edgetune.search.registry import PRUNERS, SAMPLERS
from edgetune.testing.pruners import PrunerTestCase, SchedulerTestCase
from edgetune.testing.samplers import SamplerTestCase, registry_sampler

#: Samplers that take any distribution; the grid lists the points of the space it was built
#: for, so Optuna's suites, which sample distributions of their own, do not apply to it.
GENERAL = [name for name, entry in SAMPLERS.items() if entry.max_trials is None]
#: Samplers whose `sample_relative` proposes any relative search space it is handed, which is
#: what Optuna's relative suite calls directly, with no startup trials. TPE (and MOTPE) is
#: built with `group=True`, which splits the space in `infer_relative_search_space`, a call
#: this suite skips; the GP would be fitted some 500 times (minutes on 2 cores). Both sample
#: from their models in `SamplerTestCase`, with one objective and several.
RELATIVE = ["cmaes"]


class TestSamplerContract(SamplerTestCase):
    # A GP step takes seconds (several objectives: up to ten on 2 busy cores).
    @pytest.fixture(params=[pytest.param(n, marks=pytest.mark.slow) if n == "gp" else n
                            for n in SAMPLERS])
    def sampler_name(self, request: pytest.FixtureRequest) -> str:
        name: str = request.param
        return name


def _factory(request: pytest.FixtureRequest, n_objectives: int = 1, startup: int | None = None
             ) -> Callable[[], optuna.samplers.BaseSampler]:
    return lambda: registry_sampler(request.param, n_objectives=n_objectives, startup=startup)


class TestOptunaBasicSuite(BasicSamplerTestCase):
    @pytest.fixture(params=GENERAL)
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], optuna.samplers.BaseSampler]:
        return _factory(request)


class TestOptunaRelativeSuite(RelativeSamplerTestCase):
    @pytest.fixture(params=RELATIVE)
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], optuna.samplers.BaseSampler]:
        return _factory(request, startup=0)


class TestOptunaMultiObjectiveSuite(MultiObjectiveSamplerTestCase):
    @pytest.fixture(params=[n for n in GENERAL if SAMPLERS[n].multi_objective])
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], optuna.samplers.BaseSampler]:
        return _factory(request, n_objectives=2)


class TestOptunaSingleOnlySuite(SingleOnlySamplerTestCase):
    @pytest.fixture(params=[n for n in GENERAL if not SAMPLERS[n].multi_objective])
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], optuna.samplers.BaseSampler]:
        return _factory(request)


class TestPrunerContract(PrunerTestCase):
    @pytest.fixture(params=[n for n, entry in PRUNERS.items() if entry.optuna is not None])
    def pruner_name(self, request: pytest.FixtureRequest) -> str:
        name: str = request.param
        return name


class TestSchedulerContract(SchedulerTestCase):
    @pytest.fixture(params=[n for n, entry in PRUNERS.items() if entry.ray is not None])
    def scheduler_name(self, request: pytest.FixtureRequest) -> str:
        pytest.importorskip("ray")
        name: str = request.param
        return name
