"""The ``ibm`` quantum connector: QAOA on qiskit-ibm-runtime's local fake backends (offline).

Cloud mode cannot reach IBM from here: its code path is driven with a stand-in for
``QiskitRuntimeService`` that hands out a local fake backend.
"""

from __future__ import annotations

import asyncio
import math
import sys
import textwrap
from typing import Any

import pytest
from pydantic import ValidationError

from qflow.connectors.ibm import IbmConfig, IbmConnector
from qflow.connectors.qiskit_qaoa import plan_qaoa
from qflow.connectors.qubo import parse_qubo
from qflow.connectors.sdk_extras import MissingExtra, missing_modules
from qflow.connectors.task_errors import ResultNotReady, TaskRefused
from qflow.deployment import DeploymentError, parse_deployment
from qflow.registry import connector_class
from qflow.testing.qpu_tasks import aio, wait

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
needs_sdk = pytest.mark.skipif(
    bool(missing_modules(("qiskit", "qiskit_ibm_runtime", "qiskit_aer"))),
    reason="the ibm extra (qiskit-ibm-runtime, qiskit-aer) is not installed",
)

# MIS of the path 0-1-2-3-4: {0, 2, 4}, energy -3, unique (penalty 2 > weight 1).
PATH5 = {
    "kind": "qubo",
    "num_variables": 5,
    "qubo": [[i, i, -1.0] for i in range(5)] + [[i, i + 1, 2.0] for i in range(4)],
    "num_reads": 100,
    "num_sweeps": 1000,  # the clustering client sends it; QPU connectors ignore it
    "seed": 5,
}
EDGES5 = [(i, i + 1) for i in range(4)]


def independent(sample: list[int], edges: list[tuple[int, int]]) -> bool:
    return not any(sample[i] and sample[j] for i, j in edges)


def make(**keys: Any) -> IbmConnector:
    return IbmConnector("ibmq", IbmConfig(connector="ibm", **keys))


def test_registered() -> None:
    assert connector_class("ibm") is IbmConnector


@needs_sdk
def test_qaoa_angles_match_qiskit_statevector() -> None:
    """The numpy QAOA simulation used to pick angles is the circuit qiskit builds."""
    from qiskit.quantum_info import Statevector

    from qflow.connectors.qiskit_qaoa import cost_operator, qaoa_circuit

    qubo = parse_qubo(PATH5)
    op = cost_operator(qubo)
    for reps in (1, 2):
        plan = plan_qaoa(qubo, reps)
        circuit = qaoa_circuit(qubo, plan)
        circuit.remove_final_measurements()
        exact = Statevector(circuit).expectation_value(op).real
        assert exact == pytest.approx(plan.expected_energy, abs=1e-9)
        # better than the uniform superposition (mean energy over all 32 bitstrings)
        assert plan.expected_energy < float(qubo.energies().mean()) - 0.5


@needs_sdk
@aio
async def test_qaoa_finds_the_maximum_independent_set() -> None:
    connector = make(backend="fake_nairobi", shots=1024)
    await connector.start()
    try:
        task_id = await connector.task_start(PATH5, "key-1")
        info = await wait(connector, task_id)
        assert info.state == "completed", info.message
        result = await connector.task_result(task_id)
        assert independent(result["best_sample"], EDGES5)
        assert result["best_sample"] == [1, 0, 1, 0, 1]
        assert result["best_energy"] == -3.0
        assert result["solver"] == "ibm:fake_nairobi/qaoa"
        # QAOA concentrates weight on the optimum: far above uniform sampling (1/32),
        # despite the fake backend's noise
        assert result["best_count"] > 2 * 1024 / 2**5
        assert info.qpu_seconds is not None
        assert 0 < info.qpu_seconds <= info.ended - info.started
        logs = await connector.task_logs(task_id)
        assert "transpiled for fake_nairobi" in logs and "completed" in logs
    finally:
        await connector.stop()


@needs_sdk
@aio
async def test_qubo_larger_than_the_backend_is_refused() -> None:
    connector = make(backend="fake_manila")  # 5 qubits
    await connector.start()
    big = {"kind": "qubo", "num_variables": 6, "qubo": [[i, i, -1] for i in range(6)]}
    with pytest.raises(TaskRefused, match=r"6 variables.*fake_manila has 5 qubits"):
        await connector.task_start(big, "too-big")
    small_limit = make(backend="fake_nairobi", max_variables=4)
    await small_limit.start()
    with pytest.raises(TaskRefused, match="max_variables is 4"):
        await small_limit.task_start(PATH5, "k")
    assert connector.book.tasks == {} and small_limit.book.tasks == {}
    with pytest.raises(TaskRefused, match="not supported"):
        await connector.task_start({"kind": "estimator"}, "k2")
    with pytest.raises(TaskRefused, match="out of range|from 0 to 4"):
        await connector.task_start({**PATH5, "qubo": [[0, 5, 1.0]]}, "k3")


@needs_sdk
@aio
async def test_idempotency_key_returns_the_same_task() -> None:
    connector = make()
    await connector.start()
    try:
        first = await connector.task_start(PATH5, "same-key")
        again = await connector.task_start(dict(PATH5), "same-key")
        assert again == first
        assert len(connector.book.tasks) == 1
        with pytest.raises(TaskRefused, match="already used for a different task"):
            await connector.task_start({**PATH5, "seed": 6}, "same-key")
        await wait(connector, first)
        assert await connector.task_start(PATH5, "same-key") == first  # also once final
        assert len(connector.book.tasks) == 1
    finally:
        await connector.stop()


@needs_sdk
@aio
async def test_task_stop_and_status() -> None:
    connector = make(shots=256)
    await connector.start()
    try:
        running = await connector.task_start(PATH5, "a")
        queued = await connector.task_start({**PATH5, "seed": 9}, "b")
        status = await connector.status()
        assert status.online and status.running + status.pending == 2
        await connector.task_stop(queued)  # still waiting for the QPU: cancelled at once
        assert (await connector.task_status(queued)).state == "cancelled"
        while (await connector.task_status(running)).state == "queued":
            await asyncio.sleep(0.005)
        await connector.task_stop(running)
        info = await connector.task_status(running)
        assert info.state == "cancelled" and info.message == "stopped by request"
        await asyncio.sleep(1.0)  # the worker thread finishes: the task stays cancelled
        assert (await connector.task_status(running)).state == "cancelled"
        with pytest.raises(ResultNotReady, match="cancelled"):
            await connector.task_result(running)
        await connector.task_stop(running)  # stopping a final task is harmless
        after = await connector.status()
        assert (after.running, after.pending) == (0, 0)
    finally:
        await connector.stop()


@needs_sdk
@aio
async def test_sampler_kind_runs_openqasm() -> None:
    bell2 = textwrap.dedent(
        """\
        OPENQASM 2.0;
        include "qelib1.inc";
        qreg q[2];
        creg c[2];
        h q[0];
        cx q[0], q[1];
        measure q -> c;
        """
    )
    ghz3 = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
        "qubit[3] q;\nh q[0];\ncx q[0], q[1];\ncx q[1], q[2];\n"
    )
    connector = make(backend="fake_manila")
    await connector.start()
    try:
        task = {"kind": "sampler", "circuits": [bell2, ghz3], "shots": 500}
        task_id = await connector.task_start(task, "s")
        info = await wait(connector, task_id)
        assert info.state == "completed", info.message
        result = await connector.task_result(task_id)
        bell, ghz = result["counts"]
        assert sum(bell.values()) == 500 and sum(ghz.values()) == 500
        assert bell.get("00", 0) + bell.get("11", 0) > 400  # noisy, but correlated
        assert ghz.get("000", 0) + ghz.get("111", 0) > 350
        with pytest.raises(TaskRefused, match="not valid OpenQASM"):
            await connector.task_start({"kind": "sampler", "circuits": ["nonsense"]}, "bad")
    finally:
        await connector.stop()


def test_missing_sdk_is_reported_at_validation_and_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "qiskit_ibm_runtime", None)
    with pytest.raises(ValidationError, match=r"pip install 'qflow\[ibm\]'"):
        IbmConfig(connector="ibm")
    text = """\
    version: 1
    locations:
      local: {connector: local}
      qpu: {connector: ibm, backend: fake_nairobi}
    bindings: {default: local}
    """
    with pytest.raises(DeploymentError) as caught:
        parse_deployment(textwrap.dedent(text), "ibm.yml")
    message = str(caught.value)
    assert "ibm.yml:4" in message and "qiskit-ibm-runtime" in message
    assert "pip install 'qflow[ibm]'" in message
    connector = IbmConnector("q", IbmConfig.model_construct(connector="ibm", mode="local"))
    with pytest.raises(MissingExtra, match=r"pip install 'qflow\[ibm\]'"):
        asyncio.run(connector.start())


@needs_sdk
def test_cloud_mode_needs_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="needs backend, instance, token"):
        IbmConfig(connector="ibm", mode="cloud")
    monkeypatch.setenv("QFLOW_TEST_IBM_TOKEN", "tok-abcdef-123456")
    with pytest.raises(ValidationError, match="fake backend"):
        IbmConfig(
            connector="ibm",
            mode="cloud",
            backend="fake_nairobi",
            instance="crn:v1:x",
            token="${env:QFLOW_TEST_IBM_TOKEN}",
        )
    with pytest.raises(ValidationError, match="not accepted inline"):
        IbmConfig(
            connector="ibm", mode="cloud", backend="ibm_torino", instance="i", token="raw-token"
        )


@needs_sdk
@aio
async def test_cloud_mode_keeps_the_token_out_of_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import qiskit_ibm_runtime

    token = "tok-abcdef-123456"
    monkeypatch.setenv("QFLOW_TEST_IBM_TOKEN", token)
    seen: dict[str, Any] = {}

    class Refusing:
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)
            raise ValueError(f"login failed for token {kwargs['token']}")

    monkeypatch.setattr(qiskit_ibm_runtime, "QiskitRuntimeService", Refusing)
    cfg = IbmConfig(
        connector="ibm",
        mode="cloud",
        backend="ibm_torino",
        instance="crn:v1:test",
        token="${env:QFLOW_TEST_IBM_TOKEN}",
    )
    connector = IbmConnector("cloudq", cfg)
    with pytest.raises(RuntimeError) as caught:
        await connector.start()
    assert seen == {"channel": "ibm_quantum_platform", "token": token, "instance": "crn:v1:test"}
    assert token not in str(caught.value) and "***" in str(caught.value)
    assert "ibm_torino" in str(caught.value)


@needs_sdk
@aio
async def test_cloud_mode_code_path_with_a_stand_in_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cloud mode against a stand-in service whose backend is a local fake one."""
    import qiskit_ibm_runtime
    from qiskit_ibm_runtime.fake_provider.local_service import QiskitRuntimeLocalService

    monkeypatch.setenv("QFLOW_TEST_IBM_TOKEN", "tok-abcdef-123456")

    class StandIn:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def backend(self, name: str) -> Any:
            assert name == "ibm_stand_in"
            return QiskitRuntimeLocalService().backend("fake_nairobi")

    monkeypatch.setattr(qiskit_ibm_runtime, "QiskitRuntimeService", StandIn)
    cfg = IbmConfig(
        connector="ibm",
        mode="cloud",
        backend="ibm_stand_in",
        instance="crn:v1:test",
        token="${env:QFLOW_TEST_IBM_TOKEN}",
    )
    connector = IbmConnector("cloudq", cfg)
    await connector.start()
    try:
        status = await connector.status()  # BackendV2.status() of the fake backend
        assert status.online
        task_id = await connector.task_start(PATH5, "c")
        info = await wait(connector, task_id)
        assert info.state == "completed", info.message
        result = await connector.task_result(task_id)
        assert result["best_sample"] == [1, 0, 1, 0, 1]
        assert result["solver"] == "ibm:ibm_stand_in/qaoa"
        # cloud mode reports the job's accounted usage (a local job accounts 0 s)
        assert info.qpu_seconds is not None and math.isclose(info.qpu_seconds, 0.0)
    finally:
        await connector.stop()


@needs_sdk
def test_example_deployment_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from qflow.deployment import load_deployment

    path = Path(__file__).resolve().parents[1] / "deployments" / "ibm.yml"
    deployment = load_deployment(str(path))
    qpu = deployment.locations["ibm-qpu"]
    assert isinstance(qpu, IbmConfig) and qpu.mode == "local"
    assert deployment.bindings["/loop/annealing"] == ["ibm-qpu", "local"]


def test_docs_list_the_ibm_keys() -> None:
    from pathlib import Path

    from qflow.deployment import reference_markdown
    from qflow.quantum import QuantumLocationConfig

    doc = Path(__file__).resolve().parents[1] / "docs" / "quantum-connectors.md"
    table = reference_markdown(IbmConfig, skip=QuantumLocationConfig.model_fields)
    assert table in doc.read_text(), "regenerate the ibm table in docs/quantum-connectors.md"
