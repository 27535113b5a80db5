"""The ``qrmi`` quantum connector with the real qrmi client against a local fake IBM service.

``tests/fake_ibm_service.py`` serves IBM Cloud IAM and the Quantum Compute Service API on
127.0.0.1 (started and stopped by each test); qrmi's ``ibm-quantum-compute-service``
resource talks to it over HTTP exactly as it would to IBM.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fake_ibm_service import FakeIbmService
from pydantic import ValidationError

from qflow.connectors.qrmi import QrmiConfig, QrmiConnector, QrmiTaskError
from qflow.connectors.sdk_extras import missing_modules
from qflow.connectors.task_errors import ResultNotReady, TaskRefused
from qflow.deployment import DeploymentError, load_deployment, parse_deployment
from qflow.registry import connector_class
from qflow.testing.qpu_tasks import aio, wait

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
needs_sdk = pytest.mark.skipif(
    bool(missing_modules(("qrmi", "qiskit", "qiskit_ibm_runtime"))),
    reason="qrmi and the ibm extra (qiskit-ibm-runtime) are needed",
)

API_KEY = "iam-apikey-0123456789abcdef"
CRN = "crn:v1:bluemix:public:quantum-computing:us-east:a/0:fake::"
KEY_ENV = "QFLOW_TEST_QRMI_APIKEY"
PATH5 = {
    "kind": "qubo",
    "num_variables": 5,
    "qubo": [[i, i, -1.0] for i in range(5)] + [[i, i + 1, 2.0] for i in range(4)],
    "num_reads": 100,
    "num_sweeps": 1000,
    "seed": 5,
}
BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nbit[2] c;\nqubit[2] q;\n'
    "h q[0];\ncx q[0], q[1];\nc[0] = measure q[0];\nc[1] = measure q[1];\n"
)


@pytest.fixture(autouse=True)
def _api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API key as an operator provides it: in the gateway's environment."""
    monkeypatch.setenv(KEY_ENV, API_KEY)


def config(url: str, **keys: Any) -> QrmiConfig:
    return QrmiConfig(
        connector="qrmi",
        resource="fake_nairobi",
        type="ibm-quantum-compute-service",
        environment={
            # with and without the <resource>_ prefix of QRMI's environment variables
            "fake_nairobi_QRMI_IBM_QCS_ENDPOINT": f"{url}/api/v1",
            "QRMI_IBM_QCS_IAM_ENDPOINT": url,
            "QRMI_IBM_QCS_SERVICE_CRN": CRN,
        },
        secrets={"QRMI_IBM_QCS_IAM_APIKEY": f"${{env:{KEY_ENV}}}"},
        **keys,
    )


async def started(service: FakeIbmService, **keys: Any) -> QrmiConnector:
    url = await service.start()
    connector = QrmiConnector("qrmi-qpu", config(url, **keys))
    await connector.start()
    return connector


def test_registered() -> None:
    assert connector_class("qrmi") is QrmiConnector


@needs_sdk
@aio
async def test_qubo_by_qaoa_through_qrmi() -> None:
    service = FakeIbmService(API_KEY, CRN)
    connector = await started(service, shots=512)
    try:
        task_id = await connector.task_start(PATH5, "k1")
        assert task_id in service.jobs  # the QPU's own job id
        job = service.jobs[task_id]
        assert job.program == "sampler" and job.params["pubs"][0][2] == 512
        assert job.params["pubs"][0][0].startswith("OPENQASM 3.0")
        info = await wait(connector, task_id)
        assert info.state == "completed"
        assert info.started is not None and info.ended is not None
        result = await connector.task_result(task_id)
        assert result["best_sample"] == [1, 0, 1, 0, 1] and result["best_energy"] == -3.0
        assert result["solver"] == "qrmi:ibm-quantum-compute-service/fake_nairobi/qaoa"
        assert result["num_reads"] == 512
        # ideal simulation of the QAOA circuit: the optimum far above uniform (1/32)
        assert result["best_count"] > 3 * 512 / 32
        assert await connector.task_result(task_id) == result  # cached, no second fetch
        assert service.requests.count(("GET", f"/api/v1/jobs/{task_id}/results")) == 1
        assert "Completed" in await connector.task_logs(task_id)
        # the API key went to the token endpoint only, never into the process environment
        assert service.key_leaks == []
        assert ("POST", "/identity/token") in service.requests
        assert not [k for k in os.environ if k.startswith(("QRMI_", "fake_nairobi_"))]
    finally:
        await connector.stop()
        await service.stop()


@needs_sdk
@aio
async def test_sampler_and_primitive_kinds() -> None:
    service = FakeIbmService(API_KEY, CRN)
    connector = await started(service)
    try:
        sampled = await connector.task_start(
            {"kind": "sampler", "circuits": [BELL], "shots": 300}, "s"
        )
        isa_bell = (  # physical qubits, native gates: what the service accepts as is
            'OPENQASM 3.0;\ninclude "stdgates.inc";\nbit[2] c;\n'
            "rz(pi/2) $0;\nsx $0;\nrz(pi/2) $0;\ncx $0, $1;\n"
            "c[0] = measure $0;\nc[1] = measure $1;\n"
        )
        raw_input = {"pubs": [[isa_bell, None, 50]], "version": 2}
        raw = await connector.task_start(
            {"kind": "primitive", "program_id": "sampler", "input": raw_input}, "p"
        )
        assert (await wait(connector, sampled)).state == "completed"
        counts = (await connector.task_result(sampled))["counts"][0]
        assert sum(counts.values()) == 300 and set(counts) <= {"00", "11"}
        assert (await wait(connector, raw)).state == "completed"
        passed = await connector.task_result(raw)
        assert passed["kind"] == "primitive"
        assert passed["result"]["__type__"] == "PrimitiveResult"  # QRMI's result, undecoded
        with pytest.raises(TaskRefused, match="not supported on qrmi"):
            await connector.task_start({"kind": "pulser", "sequence": "{}"}, "x")
    finally:
        await connector.stop()
        await service.stop()


@needs_sdk
@aio
async def test_idempotency_key_submits_once() -> None:
    service = FakeIbmService(API_KEY, CRN)
    connector = await started(service)
    try:
        first = await connector.task_start(PATH5, "same")
        again = await connector.task_start(dict(PATH5), "same")
        assert again == first
        assert service.requests.count(("POST", "/api/v1/jobs")) == 1
        with pytest.raises(TaskRefused, match="already used for a different task"):
            await connector.task_start({**PATH5, "seed": 1}, "same")
        big = {"kind": "qubo", "num_variables": 8, "qubo": [[i, i, -1] for i in range(8)]}
        with pytest.raises(TaskRefused, match="fake_nairobi has 7 qubits"):
            await connector.task_start(big, "big")
        assert service.requests.count(("POST", "/api/v1/jobs")) == 1
    finally:
        await connector.stop()
        await service.stop()


@needs_sdk
@aio
async def test_task_stop_cancels_the_job() -> None:
    service = FakeIbmService(API_KEY, CRN, hold=True)  # jobs stay queued
    connector = await started(service)
    try:
        task_id = await connector.task_start(PATH5, "held")
        assert (await connector.task_status(task_id)).state == "queued"
        await connector.task_stop(task_id)
        assert service.jobs[task_id].status == "Cancelled"
        assert ("POST", f"/api/v1/jobs/{task_id}/cancel") in service.requests
        info = await connector.task_status(task_id)
        assert info.state == "cancelled" and info.ended is not None
        with pytest.raises(ResultNotReady, match="cancelled"):
            await connector.task_result(task_id)
        service.release_jobs()
        await asyncio.sleep(0.2)
        assert (await connector.task_status(task_id)).state == "cancelled"
        calls = len(service.requests)
        await connector.task_stop(task_id)  # already final: no call to the QPU
        assert len(service.requests) == calls
    finally:
        await connector.stop()
        await service.stop()


@needs_sdk
@aio
async def test_status_follows_the_backend() -> None:
    service = FakeIbmService(API_KEY, CRN)
    connector = await started(service)
    try:
        status = await connector.status()
        assert status.online and status.pending == 0
        assert "fake_nairobi: online" in status.detail
        service.online = False
        assert not (await connector.status()).online
    finally:
        await connector.stop()
        await service.stop()


@needs_sdk
@aio
async def test_wrong_api_key_fails_without_showing_it() -> None:
    service = FakeIbmService("the-right-key-000000", CRN)
    connector = await started(service)  # qrmi only talks to the service when used
    try:
        with pytest.raises(QrmiTaskError) as caught:
            await connector.status()
        message = str(caught.value)
        assert "status failed" in message and "qrmi-qpu" in message
        assert API_KEY not in message
        with pytest.raises(QrmiTaskError) as caught:
            await connector.task_start(PATH5, "k")
        assert API_KEY not in str(caught.value)
        logs = [connector._scrub(f"key {API_KEY}")]
        assert logs == ["key ***"]
    finally:
        await connector.stop()
        await service.stop()


def test_config_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    if missing_modules(("qrmi", "qiskit", "qiskit_ibm_runtime")):
        pytest.skip("qrmi and the ibm extra are needed")
    base = {"connector": "qrmi", "resource": "r", "type": "ibm-quantum-compute-service"}
    with pytest.raises(ValidationError, match="is a credential") as caught:
        QrmiConfig(**base, environment={"QRMI_IBM_QCS_IAM_APIKEY": API_KEY})
    assert API_KEY not in str(caught.value).split("input_value")[0]
    with pytest.raises(ValidationError, match="not accepted inline"):
        QrmiConfig(**base, secrets={"QRMI_IBM_QCS_IAM_APIKEY": API_KEY})
    with pytest.raises(ValidationError, match="needs QRMI_IBM_QCS_ENDPOINT"):
        QrmiConfig(**base, secrets={"QRMI_IBM_QCS_IAM_APIKEY": f"${{env:{KEY_ENV}}}"})
    with pytest.raises(ValidationError, match="is not set"):
        QrmiConfig(**base, environment={"QRMI_IBM_QCS_ENDPOINT": "${env:QFLOW_TEST_UNSET_X}"})
    with pytest.raises(ValidationError, match="type"):
        QrmiConfig(**{**base, "type": "ibm-quantum-computer"})


def test_missing_sdk_is_reported_at_validation_and_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "qrmi", None)
    text = """\
    version: 1
    locations:
      local: {connector: local}
      qpu:
        connector: qrmi
        resource: ibm_torino
        type: ibm-quantum-compute-service
    bindings: {default: local}
    """
    with pytest.raises(DeploymentError) as caught:
        parse_deployment(textwrap.dedent(text), "qrmi.yml")
    assert "qrmi.yml:4" in str(caught.value) and "pip install 'qflow[qrmi]'" in str(caught.value)
    connector = QrmiConnector(
        "q",
        QrmiConfig.model_construct(
            connector="qrmi", resource="r", type="pasqal-cloud", environment={}, secrets={}
        ),
    )
    with pytest.raises(ImportError, match=r"pip install 'qflow\[qrmi\]'"):
        asyncio.run(connector.start())


def test_missing_qiskit_for_ibm_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    if missing_modules(("qrmi",)):
        pytest.skip("qrmi is not installed")
    monkeypatch.setitem(sys.modules, "qiskit_ibm_runtime", None)
    with pytest.raises(ValidationError, match=r"pip install 'qflow\[qrmi,ibm\]'"):
        QrmiConfig(connector="qrmi", resource="r", type="ibm-quantum-compute-service")
    # Pasqal resources do not need qiskit
    QrmiConfig(connector="qrmi", resource="FRESNEL", type="pasqal-cloud")


@needs_sdk
@aio
async def test_example_deployment_against_the_fake_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = FakeIbmService(API_KEY, CRN, backend="fake_nairobi")
    url = await service.start()
    monkeypatch.setenv("QRMI_IBM_ENDPOINT", f"{url}/api/v1")
    monkeypatch.setenv("QRMI_IBM_IAM_ENDPOINT", url)
    monkeypatch.setenv("QRMI_IBM_CRN", CRN)
    monkeypatch.setenv("QRMI_IBM_APIKEY", API_KEY)
    try:
        path = Path(__file__).resolve().parents[1] / "deployments" / "qrmi.yml"
        text = path.read_text().replace("resource: ibm_torino", "resource: fake_nairobi")
        deployment = parse_deployment(text, "qrmi.yml")
        assert deployment.bindings["/loop/annealing"] == ["qrmi-qpu", "local"]
        assert load_deployment(path).locations["qrmi-qpu"].resource == "ibm_torino"
        connector = QrmiConnector("qrmi-qpu", deployment.locations["qrmi-qpu"])
        await connector.start()
        assert (await connector.status()).online
        await connector.stop()
    finally:
        await service.stop()


def test_docs_list_the_qrmi_keys() -> None:
    from qflow.deployment import reference_markdown
    from qflow.quantum import QuantumLocationConfig

    doc = Path(__file__).resolve().parents[1] / "docs" / "quantum-connectors.md"
    table = reference_markdown(QrmiConfig, skip=QuantumLocationConfig.model_fields)
    assert table in doc.read_text(), "regenerate the qrmi table in docs/quantum-connectors.md"


@pytest.mark.skipif(bool(missing_modules(("qrmi",))), reason="qrmi is not installed")
@aio
async def test_environment_fallback_is_scoped_to_the_constructor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resource type without from_config is built from <resource>_QRMI_* variables: they
    exist during the constructor call only."""
    import qrmi

    seen: dict[str, str | None] = {}

    class Resource:
        @staticmethod
        def from_config(resource: str, kind: Any, settings: dict[str, str]) -> Any:
            raise NotImplementedError("from_config")

        def __init__(self, resource: str, kind: Any) -> None:
            for setting in ("AUTH_TOKEN", "PROJECT_ID"):
                name = f"FRESNEL_QRMI_PASQAL_CLOUD_{setting}"
                seen[name] = os.environ.get(name)

        def metadata(self) -> dict[str, str]:
            return {"backend": "FRESNEL"}

    monkeypatch.setattr(qrmi, "QuantumResource", Resource)
    monkeypatch.setenv("QFLOW_TEST_PASQAL_TOKEN", "pasqal-token-55555")
    cfg = QrmiConfig(
        connector="qrmi",
        resource="FRESNEL",
        type="pasqal-cloud",
        environment={"FRESNEL_QRMI_PASQAL_CLOUD_PROJECT_ID": "project-7"},
        secrets={"QRMI_PASQAL_CLOUD_AUTH_TOKEN": "${env:QFLOW_TEST_PASQAL_TOKEN}"},
    )
    connector = QrmiConnector("atoms", cfg)
    await connector.start()
    assert seen == {
        "FRESNEL_QRMI_PASQAL_CLOUD_AUTH_TOKEN": "pasqal-token-55555",
        "FRESNEL_QRMI_PASQAL_CLOUD_PROJECT_ID": "project-7",
    }
    assert not [k for k in os.environ if k.startswith("FRESNEL_")]
    assert connector.kinds == ("pulser",)
    with pytest.raises(TaskRefused, match="use the pasqal connector"):
        await connector.task_start(PATH5, "q")
