"""The ``pasqal`` quantum connector: MIS QUBOs on atoms emulated by pulser's QutipEmulator.

Pasqal Cloud cannot be reached from here: cloud mode is driven with a stand-in for the
pasqal-cloud client (device specs from pulser's AnalogDevice, canned batch results).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from qflow.connectors.pasqal import (
    EmbeddingError,
    PasqalConfig,
    PasqalConnector,
    embed,
)
from qflow.connectors.qubo import parse_qubo
from qflow.connectors.sdk_extras import MissingExtra, missing_modules
from qflow.connectors.task_errors import TaskRefused
from qflow.deployment import DeploymentError, load_deployment, parse_deployment
from qflow.registry import connector_class
from qflow.testing.qpu_tasks import aio, wait

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
needs_sdk = pytest.mark.skipif(
    bool(missing_modules(("pulser", "pulser_simulation"))),
    reason="the pasqal extra (pulser, pulser-simulation) is not installed",
)


def mis(n: int, edges: list[tuple[int, int]], weights: list[float] | None = None) -> dict:
    weights = weights or [1.0] * n
    return {
        "kind": "qubo",
        "num_variables": n,
        "qubo": [[i, i, -w] for i, w in enumerate(weights)] + [[i, j, 2.0] for i, j in edges],
        "num_reads": 100,
        "seed": 3,
    }


# The path 0-1-2-3-4: MIS {0, 2, 4}, unique.
PATH5_EDGES = [(i, i + 1) for i in range(4)]
PATH5 = mis(5, PATH5_EDGES)
# A triangle 0-1-2 with a tail 2-3-4-5 and weights that make {1, 3, 5} the unique optimum
# (energy -4.5; {0, 3, 5} has -4, {0, 2, 4}... are not independent or weigh less).
TAILED_EDGES = [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (4, 5)]
TAILED = mis(6, TAILED_EDGES, [1.0, 1.5, 1.0, 1.5, 1.0, 1.5])


def brute_force(task: dict) -> tuple[list[int], float]:
    qubo = parse_qubo(task)
    n = qubo.num_variables
    scored = [(qubo.energy(bits), list(bits)) for bits in itertools.product((0, 1), repeat=n)]
    energy, best = min(scored)
    assert sum(1 for e, _ in scored if e == energy) == 1, "the test QUBO must have one optimum"
    return best, energy


def make(**keys: Any) -> PasqalConnector:
    return PasqalConnector("atoms", PasqalConfig(connector="pasqal", **keys))


def cloud_connector(**keys: Any) -> PasqalConnector:
    """Cloud mode on FRESNEL, its password read from ``QFLOW_TEST_PASQAL_PW``."""
    cfg = PasqalConfig(
        connector="pasqal",
        mode="cloud",
        device="FRESNEL",
        username="me@example.org",
        password="${env:QFLOW_TEST_PASQAL_PW}",
        project_id="p-1",
        **keys,
    )
    return PasqalConnector("cloud-atoms", cfg)


def test_registered() -> None:
    assert connector_class("pasqal") is PasqalConnector


@needs_sdk
def test_embedding_puts_conflicts_inside_the_blockade_radius() -> None:
    from pulser.devices import AnalogDevice

    for task, edges in ((PATH5, PATH5_EDGES), (TAILED, TAILED_EDGES)):
        embedding = embed(parse_qubo(task), AnalogDevice)
        coords = embedding.coords
        radius = embedding.blockade_radius
        assert AnalogDevice.rydberg_blockade_radius(embedding.omega) == pytest.approx(radius)
        assert embedding.omega <= AnalogDevice.channels["rydberg_global"].max_amp
        for i, j in itertools.combinations(range(len(coords)), 2):
            d = math.dist(coords[i], coords[j])
            assert d >= AnalogDevice.min_atom_distance - 1e-6
            if (i, j) in edges:
                assert d < radius, (i, j, d, radius)
            else:
                assert d > radius, (i, j, d, radius)
        assert max(math.hypot(x, y) for x, y in coords) <= AnalogDevice.max_radial_distance


@needs_sdk
@pytest.mark.parametrize("device", ["AnalogDevice", "DigitalAnalogDevice"])
@pytest.mark.parametrize("name", ["path5", "tailed6"])
def test_adiabatic_sweep_finds_the_optimum(device: str, name: str) -> None:
    task, edges = {"path5": (PATH5, PATH5_EDGES), "tailed6": (TAILED, TAILED_EDGES)}[name]
    expected, energy = brute_force(task)

    async def scenario() -> None:
        connector = make(device=device, shots=200)
        await connector.start()
        try:
            task_id = await connector.task_start(task, "k")
            info = await wait(connector, task_id)
            assert info.state == "completed", info.message
            result = await connector.task_result(task_id)
            sample = result["best_sample"]
            assert not any(sample[i] and sample[j] for i, j in edges)
            assert sample == expected and result["best_energy"] == pytest.approx(energy)
            assert result["solver"] == f"pasqal:{device}/adiabatic"
            # the sweep concentrates the samples on large independent sets: the optimum is
            # among the few most frequent outcomes, far above uniform (1/2**n)
            assert result["best_count"] > 200 * 4 / 2 ** len(sample)
            assert info.qpu_seconds is not None and info.qpu_seconds > 0
            assert "blockade radius" in await connector.task_logs(task_id)
        finally:
            await connector.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@needs_sdk
@aio
async def test_qubos_the_atoms_cannot_take_are_refused() -> None:
    connector = make(max_atoms=6)
    await connector.start()
    star = mis(7, [(0, k) for k in range(1, 7)])  # 6 leaves around one atom: no layout
    with pytest.raises(TaskRefused, match="max_atoms|more than this QPU takes"):
        await connector.task_start(star, "star")
    wide = make(max_atoms=10)
    await wide.start()
    with pytest.raises(EmbeddingError, match="cannot be laid out as atoms"):
        await wide.task_start(star, "star")
    negative = mis(3, [(0, 1)])
    negative["qubo"].append([1, 2, -0.5])
    with pytest.raises(TaskRefused, match="not MIS-shaped"):
        await wide.task_start(negative, "neg")
    with pytest.raises(TaskRefused, match="kind 'sampler' is not supported"):
        await wide.task_start({"kind": "sampler"}, "s")
    assert wide.book.tasks == {} and connector.book.tasks == {}


@needs_sdk
@aio
async def test_idempotency_stop_and_status() -> None:
    connector = make(shots=50)
    await connector.start()
    try:
        first = await connector.task_start(PATH5, "one")
        assert await connector.task_start(dict(PATH5), "one") == first
        with pytest.raises(TaskRefused, match="already used"):
            await connector.task_start(TAILED, "one")
        second = await connector.task_start(TAILED, "two")
        status = await connector.status()
        assert status.online and status.running + status.pending == 2
        await connector.task_stop(second)
        assert (await connector.task_status(second)).state == "cancelled"
        assert (await wait(connector, first)).state == "completed"
        assert len(connector.book.tasks) == 2
    finally:
        await connector.stop()


def test_missing_sdk_is_reported_at_validation_and_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pulser", None)
    with pytest.raises(ValidationError, match=r"pip install 'qflow\[pasqal\]'"):
        PasqalConfig(connector="pasqal")
    text = """\
    version: 1
    locations:
      local: {connector: local}
      atoms:
        connector: pasqal
    bindings: {default: local}
    """
    with pytest.raises(DeploymentError) as caught:
        parse_deployment(textwrap.dedent(text), "pasqal.yml")
    assert "pasqal.yml:4" in str(caught.value)
    assert "pip install 'qflow[pasqal]'" in str(caught.value)
    connector = PasqalConnector("a", PasqalConfig.model_construct(connector="pasqal", mode="local"))
    with pytest.raises(MissingExtra, match=r"pip install 'qflow\[pasqal\]'"):
        asyncio.run(connector.start())


@needs_sdk
def test_config_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="unknown local device"):
        PasqalConfig(connector="pasqal", device="FRESNEL")
    if missing_modules(("pasqal_cloud",)):
        return
    with pytest.raises(ValidationError, match="needs username, password, project_id"):
        PasqalConfig(connector="pasqal", mode="cloud", device="FRESNEL")
    with pytest.raises(ValidationError, match="not accepted inline"):
        PasqalConfig(connector="pasqal", mode="cloud", username="u", password="pw", project_id="p")


class StandInClient:
    """Pasqal Cloud as pasqal-cloud's client sees it: specs, batches, results."""

    password = "pasqal-pw-98765"
    result = {"10000": 9, "00001": 1, "00000": 5}
    """pulser order (atom 0 leftmost): "00001" is variable 4 alone."""

    def __init__(self, username: str, password: str, project_id: str) -> None:
        from pulser.devices import AnalogDevice

        assert password == self.password
        self.specs = {"FRESNEL": AnalogDevice.to_abstract_repr()}
        self.batches: dict[str, Any] = {}
        self.cancelled: list[str] = []

    def get_device_specs_dict(self) -> dict[str, str]:
        return self.specs

    def create_batch(self, serialized_sequence: str, jobs: list, emulator: Any, wait: bool) -> Any:
        from types import SimpleNamespace

        assert '"register"' in serialized_sequence and jobs == [{"runs": 200}]
        batch_id = f"b{len(self.batches)}"
        job = SimpleNamespace(result=self.result)
        self.batches[batch_id] = SimpleNamespace(
            id=batch_id, status="PENDING", ordered_jobs=[job], emulator=emulator, polls=0
        )
        return self.batches[batch_id]

    def get_batch(self, batch_id: str) -> Any:
        batch = self.batches[batch_id]
        batch.polls += 1
        if batch.status == "PENDING" and batch.polls >= 2:
            batch.status = "DONE"
        return batch

    def cancel_batch(self, batch_id: str) -> None:
        self.cancelled.append(batch_id)


@pytest.mark.skipif(
    bool(missing_modules(("pulser", "pasqal_cloud"))), reason="pasqal-cloud is not installed"
)
@aio
async def test_cloud_mode_with_a_stand_in_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from pasqal_cloud import pasqal_cloud_client

    monkeypatch.setattr(pasqal_cloud_client, "PasqalCloudClient", StandInClient)
    monkeypatch.setenv("QFLOW_TEST_PASQAL_PW", StandInClient.password)
    connector = cloud_connector(emulator="EMU_MPS", poll_interval=0.01)
    await connector.start()
    try:
        weights = [1.0, 1.0, 1.0, 1.0, 2.0]  # variable 4 alone (-2) beats variable 0 alone
        task_id = await connector.task_start(mis(5, PATH5_EDGES, weights), "c")
        info = await wait(connector, task_id)
        assert info.state == "completed", info.message
        result = await connector.task_result(task_id)
        assert result["best_sample"] == [0, 0, 0, 0, 1] and result["best_energy"] == -2.0
        assert result["solver"] == "pasqal:AnalogDevice/adiabatic@EMU_MPS"
    finally:
        await connector.stop()


@pytest.mark.skipif(
    bool(missing_modules(("pulser", "pasqal_cloud"))), reason="pasqal-cloud is not installed"
)
@aio
async def test_cloud_password_never_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from pasqal_cloud import pasqal_cloud_client

    password = "pasqal-pw-98765"

    class Refusing:
        def __init__(self, username: str, password: str, project_id: str) -> None:
            raise PermissionError(f"invalid credentials {username}:{password}")

    monkeypatch.setattr(pasqal_cloud_client, "PasqalCloudClient", Refusing)
    monkeypatch.setenv("QFLOW_TEST_PASQAL_PW", password)
    with pytest.raises(RuntimeError) as caught:
        await cloud_connector().start()
    assert password not in str(caught.value) and "***" in str(caught.value)
    assert "PermissionError" in str(caught.value)


@needs_sdk
def test_example_deployment_validates() -> None:
    path = Path(__file__).resolve().parents[1] / "deployments" / "pasqal.yml"
    deployment = load_deployment(path)
    qpu = deployment.locations["pasqal-qpu"]
    assert isinstance(qpu, PasqalConfig) and qpu.mode == "local"
    assert deployment.bindings["/loop/annealing"] == ["pasqal-qpu", "local"]


def test_docs_list_the_pasqal_keys() -> None:
    from qflow.deployment import reference_markdown
    from qflow.quantum import QuantumLocationConfig

    doc = Path(__file__).resolve().parents[1] / "docs" / "quantum-connectors.md"
    table = reference_markdown(PasqalConfig, skip=QuantumLocationConfig.model_fields)
    assert table in doc.read_text(), "regenerate the pasqal table in docs/quantum-connectors.md"


@pytest.mark.skipif(
    bool(missing_modules(("pulser", "pasqal_cloud"))), reason="pasqal-cloud is not installed"
)
@aio
async def test_stopping_the_connector_cancels_a_running_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pasqal_cloud import pasqal_cloud_client

    clients: list[StandInClient] = []

    class NeverDone(StandInClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            clients.append(self)

        def get_batch(self, batch_id: str) -> Any:
            return self.batches[batch_id]  # stays PENDING

    monkeypatch.setattr(pasqal_cloud_client, "PasqalCloudClient", NeverDone)
    monkeypatch.setenv("QFLOW_TEST_PASQAL_PW", StandInClient.password)
    connector = cloud_connector(poll_interval=0.01)
    await connector.start()
    task_id = await connector.task_start(PATH5, "long")
    while not clients[0].batches:
        await asyncio.sleep(0.01)
    assert (await connector.task_status(task_id)).state == "running"
    await connector.stop()  # e.g. the run ends: the batch must not be left running
    assert clients[0].cancelled == ["b0"]
    assert (await connector.task_status(task_id)).state == "cancelled"
