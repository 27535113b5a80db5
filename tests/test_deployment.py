"""deployment.yml: every bad input gives FILE:LINE: key.path: what. Fix: how; good input loads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr

from qflow.connector import Connector, LocationConfig
from qflow.deployment import (
    EMBEDDED_DEFAULT,
    Deployment,
    DeploymentError,
    Policy,
    UnboundStepError,
    embedded_default,
    load_deployment,
    parse_deployment,
    reference_markdown,
)
from qflow.registry import registry

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "deployment.md"


class BatchConnector(Connector):
    """A Slurm-like test connector with a required key and an optional one."""

    class Config(LocationConfig):
        partition: str
        time: int | None = None

    async def run(self, job, on_started):  # pragma: no cover - never run here
        raise NotImplementedError


class SecretConnector(BatchConnector):
    class Config(BatchConnector.Config):
        api_token: SecretStr | None = None


class HereConnector(Connector):
    async def run(self, job, on_started):  # pragma: no cover - never run here
        raise NotImplementedError


TEST_CONNECTORS = {"batch": BatchConnector, "here": HereConnector}


@pytest.fixture(autouse=True)
def test_connectors():
    """Register the test connectors in the (cached) registry, and restore it afterwards."""
    eps = registry()
    saved = {name: eps[name] for name in TEST_CONNECTORS if name in eps}
    eps.update(TEST_CONNECTORS)
    yield
    for name in TEST_CONNECTORS:
        eps.pop(name, None)
    eps.update(saved)


GOOD = """\
version: 1
locations:
  here:
    connector: here
    slots: 2
  compute:
    connector: batch
    partition: compute
    nodes: 1
    slots: 3
bindings:
  default: here
  /loop/annealing: [compute, here]
  /loop: compute
policy:
  allocation: per-step
"""


def problems(text: str, source: str = "deploy.yml") -> list[str]:
    with pytest.raises(DeploymentError) as info:
        parse_deployment(textwrap.dedent(text), source)
    assert str(info.value) == "\n".join(info.value.messages)
    for message in info.value.messages:
        assert "Fix: " in message, message
    return info.value.messages


def line(text: str, needle: str) -> int:
    """1-based line of the first line of ``text`` containing ``needle``."""
    for number, content in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in content:
            return number
    raise AssertionError(f"{needle!r} not in text")


def only(messages: list[str]) -> str:
    assert len(messages) == 1, messages
    return messages[0]


# --- bad input: one test per case --------------------------------------------------------------


def test_yaml_syntax_error_names_file_line_and_column():
    text = "version: 1\nlocations:\n  here: {connector: here, slots: [1\n"
    message = only(problems(text))
    assert message.startswith("deploy.yml:4:1: YAML syntax error: ")
    assert "flow sequence" in message


def test_duplicate_key_is_a_yaml_error():
    text = "version: 1\nversion: 1\nlocations: {here: {connector: here}}\n"
    message = only(problems(text))
    assert message.startswith("deploy.yml:2:1: YAML syntax error: ")
    assert "duplicate key" in message
    assert "Fix: keep only one" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yml"
    with pytest.raises(DeploymentError) as info:
        load_deployment(path)
    message = only(info.value.messages)
    assert message.startswith(f"{path}: no such deployment file. Fix: ")


@pytest.mark.parametrize(
    ("text", "got"),
    [("- here\n- compute\n", "got a list"), ("just words\n", "got 'just words'")],
)
def test_not_a_mapping(text, got):
    message = only(problems(text))
    assert message.startswith("deploy.yml:1: the deployment must be a mapping")
    assert got in message


def test_empty_file():
    assert only(problems("# nothing yet\n")).startswith("deploy.yml:1: the deployment is empty.")


def test_unknown_top_level_key_suggests_the_closest():
    text = GOOD.replace("bindings:", "bindigs:")
    message = only(problems(text))
    assert message.startswith(f"deploy.yml:{line(text, 'bindigs')}: bindigs: unknown key. Fix: ")
    assert "did you mean 'bindings'?" in message
    assert "version, locations, bindings, policy" in message


@pytest.mark.parametrize("value", ["2", "'1'", "true"])
def test_wrong_version(value):
    text = GOOD.replace("version: 1", f"version: {value}")
    message = only(problems(text))
    assert message.startswith("deploy.yml:1: version: ")
    assert "Fix: set version: 1" in message


def test_missing_version():
    text = GOOD.replace("version: 1\n", "")
    assert only(problems(text)).startswith("deploy.yml:1: version: required key is missing.")


def test_unknown_connector_lists_installed_ones():
    text = GOOD.replace("connector: batch", "connector: bach")
    message = only(problems(text))
    number = line(text, "connector: bach")
    assert message.startswith(f"deploy.yml:{number}: locations.compute.connector: ")
    assert "unknown connector 'bach'" in message
    assert "batch" in message and "here" in message  # installed connectors
    assert "did you mean 'batch'?" in message


def test_missing_connector_key():
    text = GOOD.replace("    connector: batch\n", "")
    message = only(problems(text))
    assert message.startswith(
        f"deploy.yml:{line(text, 'compute:')}: locations.compute.connector: required key"
    )


def test_broken_connector_entry_point_is_reported_not_raised():
    registry()["broken"] = "not a class"  # what a bad third-party entry point looks like
    try:
        message = only(problems(GOOD.replace("connector: batch", "connector: broken")))
    finally:
        del registry()["broken"]
    assert "locations.compute.connector: connector 'broken' is installed but cannot be" in message


def test_unknown_location_key_suggests_the_closest():
    text = GOOD.replace("partition: compute", "partition: compute\n    partiton: other")
    message = only(problems(text))
    number = line(text, "partiton")
    assert message.startswith(f"deploy.yml:{number}: locations.compute.partiton: unknown key.")
    assert "did you mean 'partition'?" in message
    assert "connector, slots, nodes, quantum, retries, placement, partition, time" in message


@pytest.mark.parametrize(
    ("value", "got"), [("three", "'three'"), ("0", "0"), ("2.5", "2.5"), ("[3]", "a list")]
)
def test_wrong_type_or_range(value, got):
    text = GOOD.replace("slots: 3", f"slots: {value}")
    message = only(problems(text))
    number = line(text, f"slots: {value}")
    assert message.startswith(
        f"deploy.yml:{number}: locations.compute.slots: expected an integer >= 1, got {got}. Fix: "
    )
    assert "e.g. slots: 1" in message


def test_wrong_type_of_a_connector_key():
    text = GOOD.replace("partition: compute", "partition: compute\n    time: soon")
    message = only(problems(text))
    number = line(text, "time: soon")
    assert message.startswith(
        f"deploy.yml:{number}: locations.compute.time: expected an integer, got 'soon'."
    )


def test_secret_values_are_not_quoted_back():
    text = GOOD.replace("partition: compute", "partition: compute\n    api_token: [hunter2]")
    registry()["batch"] = SecretConnector
    message = only(problems(text))
    assert message.startswith(f"deploy.yml:{line(text, 'api_token')}: locations.compute.api_token")
    assert "hunter2" not in message


def test_missing_required_connector_key():
    text = GOOD.replace("    partition: compute\n", "")
    message = only(problems(text))
    number = line(text, "compute:")
    assert message.startswith(
        f"deploy.yml:{number}: locations.compute.partition: required key is missing. Fix: add "
        "`partition: <partition>` to locations.compute"
    )


def test_location_that_is_not_a_mapping():
    text = GOOD.replace("bindings:", "  spare: batch\nbindings:")
    message = only(problems(text))
    assert message.startswith(f"deploy.yml:{line(text, 'spare')}: locations.spare: expected a")


@pytest.mark.parametrize("value", ["", " {}", " []"])
def test_no_locations(value):
    text = f"version: 1\nlocations:{value}\n"
    message = only(problems(text))
    assert message.startswith("deploy.yml:2: locations: expected a non-empty mapping")


def test_binding_to_an_unknown_location():
    text = GOOD.replace("[compute, here]", "[compute,\n    hre]")
    message = only(problems(text))
    number = line(text, "hre]")
    assert message.startswith(
        f"deploy.yml:{number}: bindings./loop/annealing[1]: unknown location 'hre' "
        "(declared: here, compute). Fix: did you mean 'here'?"
    )


def test_single_name_binding_to_an_unknown_location():
    text = GOOD.replace("/loop: compute", "/loop: computer")
    message = only(problems(text))
    assert message.startswith(f"deploy.yml:{line(text, '/loop: ')}: bindings./loop: unknown")
    assert "did you mean 'compute'?" in message


@pytest.mark.parametrize(("key", "fix"), [("loop", "write /loop"), ("/loop/", "write /loop")])
def test_binding_key_that_is_not_a_step_path(key, fix):
    text = GOOD.replace("/loop: compute", f"{key}: compute")
    message = only(problems(text))
    assert message.startswith(f"deploy.yml:{line(text, key + ': ')}: bindings.{key}: ")
    assert f"Fix: {fix}" in message


@pytest.mark.parametrize("value", ["[]", "", "''"])
def test_empty_candidate_list(value):
    text = GOOD.replace("[compute, here]", value)
    message = only(problems(text))
    number = line(text, "/loop/annealing:")
    assert message.startswith(f"deploy.yml:{number}: bindings./loop/annealing: expected a")
    assert "non-empty list" in message


@pytest.mark.parametrize("strategy", ["per-step", "held", "malleable", "auto"])
def test_every_allocation_strategy_is_accepted(strategy: str):
    text = GOOD.replace("allocation: per-step", f"allocation: {strategy}")
    assert parse_deployment(text, "deploy.yml").policy.allocation == strategy


def test_unknown_allocation_policy_suggests_the_closest():
    text = GOOD.replace("allocation: per-step", "allocation: perstep")
    message = only(problems(text))
    assert message.startswith(f"deploy.yml:{line(text, 'allocation:')}: policy.allocation: ")
    assert "did you mean 'per-step'?" in message


def test_unknown_policy_key():
    text = GOOD.replace("allocation: per-step", "alocation: per-step")
    message = only(problems(text))
    assert message.startswith(f"deploy.yml:{line(text, 'alocation')}: policy.alocation: unknown")


def test_every_problem_is_reported_in_file_order():
    text = """\
        version: 3
        locations:
          here:
            connector: here
            slots: many
          compute:
            connector: batch
            partion: compute
        bindings:
          default: nowhere
          loop: here
        policy:
          allocation: hold
        extra: 1
        """
    messages = problems(text)
    expected = [
        (1, "version"),
        (5, "locations.here.slots"),
        (6, "locations.compute.partition"),  # missing: reported at the location's line
        (8, "locations.compute.partion"),
        (10, "bindings.default"),
        (11, "bindings.loop"),
        (13, "policy.allocation"),
        (14, "extra"),
    ]
    assert [m.split(": ")[:2] for m in messages] == [
        [f"deploy.yml:{n}", path] for n, path in expected
    ]


# --- bindings against a workflow's steps -------------------------------------------------------


def test_unbound_step_without_default():
    text = GOOD.replace("  default: here\n", "")
    deployment = parse_deployment(text, "deploy.yml")
    messages = deployment.check_steps(["/prepare", "/loop", "/loop/annealing"])
    assert messages == [
        f"deploy.yml:{line(text, 'bindings:')}: bindings: step /prepare is not bound to any "
        "location. Fix: add a binding for /prepare or a default"
    ]
    with pytest.raises(UnboundStepError, match="/prepare"):
        deployment.candidates("/prepare")
    assert issubclass(UnboundStepError, LookupError)


def test_binding_naming_a_step_that_does_not_exist_is_an_error():
    text = GOOD.replace("  default: here\n", "").replace("/loop: compute", "/lop: compute")
    deployment = parse_deployment(text, "deploy.yml")
    steps = ["/prepare", "/loop/annealing", "/loop/score"]
    assert deployment.check_steps(steps) == [  # with the unbound steps, in file order
        f"deploy.yml:{line(text, 'bindings:')}: bindings: step /prepare is not bound to any "
        "location. Fix: add a binding for /prepare or a default",
        f"deploy.yml:{line(text, 'bindings:')}: bindings: step /loop/score is not bound to any "
        "location. Fix: add a binding for /loop/score or a default",
        f"deploy.yml:{line(text, '/lop:')}: bindings./lop: the workflow has no step /lop. "
        "Fix: did you mean '/loop'? Otherwise remove the binding or bind an existing step path "
        "(steps: /prepare, /loop, /loop/annealing, /loop/score)",
    ]


def test_the_embedded_default_may_bind_steps_a_workflow_lacks():
    """It serves every workflow: its /loop/annealing binding is no typo for /sleep."""
    assert embedded_default().check_steps(["/sleep"]) == []
    same = parse_deployment(EMBEDDED_DEFAULT.read_text(), "local.yml")
    assert "local.yml:" in only(same.check_steps(["/sleep"]))


def test_all_steps_bound():
    deployment = parse_deployment(GOOD, "deploy.yml")
    assert deployment.check_steps(["/prepare", "/loop", "/loop/annealing", "/loop/fit"]) == []


def test_sub_workflow_steps_need_no_binding_of_their_own():
    text = GOOD.replace("  default: here\n", "").replace("/loop: compute", "/loop/fit: here")
    deployment = parse_deployment(text, "deploy.yml")
    assert deployment.check_steps(["/loop", "/loop/annealing", "/loop/fit"]) == []


# --- good input --------------------------------------------------------------------------------


def test_candidates_precedence():
    deployment = parse_deployment(GOOD, "deploy.yml")
    assert deployment.candidates("/loop/annealing") == ["compute", "here"]  # exact
    assert deployment.candidates("/loop/fit") == ["compute"]  # nearest ancestor
    assert deployment.candidates("/loop/annealing/inner") == ["compute", "here"]
    assert deployment.candidates("/prepare") == ["here"]  # default
    assert deployment.candidates("/loopy") == ["here"]  # /loop is not a prefix of /loopy
    deployment.candidates("/prepare").append("mutated")
    assert deployment.candidates("/prepare") == ["here"]


def test_binding_sets_the_allocation_of_its_steps():
    text = GOOD.replace("  /loop: compute", "  /loop: {locations: compute, allocation: held}")
    deployment = parse_deployment(text, "deploy.yml")
    assert deployment.candidates("/loop/fit") == ["compute"]
    assert deployment.allocation_for("/loop/fit") == "held"  # from the /loop binding
    assert deployment.allocation_for("/loop/annealing") is None  # its own binding sets none
    assert deployment.allocation_for("/prepare") is None
    assert deployment.policy.allocation == "per-step"


@pytest.mark.parametrize(
    ("value", "path", "fix"),
    [
        ("{locations: compute, allocaton: held}", "bindings./loop.allocaton: unknown key",
         "did you mean 'allocation'?"),
        ("{locations: compute, allocation: hold}", "bindings./loop.allocation: unknown "
         "allocation strategy 'hold'", "did you mean 'held'?"),
        ("{allocation: held}", "bindings./loop: a binding written as a mapping needs `locations`",
         "{locations: [compute], allocation: held}"),
        ("{locations: [nowhere], allocation: held}", "bindings./loop[0]: unknown location",
         "declare nowhere under locations"),
    ],
)  # fmt: skip
def test_bad_binding_mapping(value: str, path: str, fix: str):
    text = GOOD.replace("  /loop: compute", f"  /loop: {value}")
    message = only(problems(text))
    assert message.startswith(f"deploy.yml:{line(text, '/loop: {')}: {path}"), message
    assert fix in message.split("Fix: ", 1)[1]


def test_strategy_a_location_cannot_use_is_refused_where_it_is_set():
    text = """\
version: 1
locations:
  here: {connector: here}
  hpc: {connector: slurm, partition: compute, login: user@login}
bindings:
  default: here
  /loop: {locations: [hpc, here], allocation: held}
policy:
  allocation: malleable
"""
    first, second = problems(text)
    assert first.startswith(f"deploy.yml:{line(text, '/loop:')}: bindings./loop.allocation: "
                            "location hpc: allocation held runs steps with srun")  # fmt: skip
    assert second.startswith(f"deploy.yml:{line(text, 'allocation: malleable')}: "
                             "policy.allocation: location hpc: allocation malleable")  # fmt: skip
    assert "Fix: use allocation: per-step for this location" in second
    # the location's own key wins over the policy: nothing left to refuse
    fixed = text.replace("login: user@login}", "login: user@login, allocation: per-step}")
    assert only(problems(fixed)).startswith(f"deploy.yml:{line(text, '/loop:')}: bindings")


def test_loaded_values_and_file_order(tmp_path):
    path = tmp_path / "deploy.yml"
    text = GOOD.replace("  here:\n", "  zeta:\n").replace("default: here", "default: zeta")
    path.write_text(text.replace("[compute, here]", "[compute, zeta]"))
    deployment = load_deployment(path)
    assert deployment.source == str(path)
    assert deployment.version == 1
    assert list(deployment.locations) == ["zeta", "compute"]
    compute = deployment.locations["compute"]
    assert isinstance(compute, BatchConnector.Config)
    assert (compute.partition, compute.nodes, compute.slots) == ("compute", 1, 3)
    assert compute.time is None
    assert deployment.locations["zeta"].slots == 2
    assert deployment.bindings == {
        "default": ["zeta"],
        "/loop/annealing": ["compute", "zeta"],
        "/loop": ["compute"],
    }
    assert deployment.policy == Policy(allocation="per-step")


def test_bindings_and_policy_are_optional():
    deployment = parse_deployment("version: 1\nlocations: {h: {connector: here}}\n", "d.yml")
    assert deployment.bindings == {}
    assert deployment.policy.allocation == "per-step"
    assert deployment.check_steps(["/a"])[0].startswith("d.yml:1: bindings: step /a is not bound")


def test_yaml_merge_keys_are_followed():
    text = """\
        version: 1
        locations:
          base: &base {connector: batch, partition: compute}
          big:
            <<: *base
            slots: 8
        """
    deployment = parse_deployment(textwrap.dedent(text), "deploy.yml")
    assert deployment.locations["big"].partition == "compute"
    assert deployment.locations["big"].slots == 8


def test_embedded_default_loads():
    deployment = embedded_default()
    assert isinstance(deployment, Deployment)
    assert deployment.source == "<embedded local.yml>"
    assert list(deployment.locations) == ["local", "qpu"]
    assert deployment.locations["local"].connector == "local"
    assert deployment.locations["local"].slots == 2
    assert deployment.locations["qpu"].connector == "emulator"
    assert deployment.candidates("/any/step") == ["local"]
    assert deployment.candidates("/loop/annealing") == ["qpu", "local"]
    assert (REPO / "deployments" / "local.yml").read_text() == EMBEDDED_DEFAULT.read_text()


def test_reference_markdown_covers_location_config():
    table = reference_markdown()
    for name, info in LocationConfig.model_fields.items():
        assert f"| `{name}` |" in table
        assert " ".join(info.description.split()) in table
    assert "| `slots` | an integer >= 1 | `1` |" in table
    own = reference_markdown(BatchConnector.Config, skip=LocationConfig.model_fields)
    assert "| `partition` | a string | required |" in own
    assert "`slots`" not in own


def test_docs_reference_is_up_to_date():
    from qflow.deployment.reference import BEGIN, END, generated_reference

    doc = DOCS.read_text()
    block = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == generated_reference().strip(), (
        "docs/deployment.md is out of date: "
        "run python -m qflow.deployment.reference docs/deployment.md"
    )


def test_built_in_names_stay_built_in_and_other_packages_are_found(tmp_path: Path, monkeypatch):
    """A run asks qflow's own distribution for built-in names; another package's entry points
    are found too, but cannot take a built-in's name."""
    from qflow import registry as registry_module
    from qflow.connectors.local import LocalConnector

    dist = tmp_path / "thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[qflow.connectors]\nlocal = thirdparty:Impostor\nvendor-qpu = thirdparty:VendorQpu\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_ENTRIES", {})
    registry_module.registry.cache_clear()
    try:
        assert registry_module.connector_class("local") is LocalConnector
        assert "vendor-qpu" not in registry_module._ENTRIES  # not scanned for a built-in
        found = registry_module.registry()
        assert found["local"] is LocalConnector
        assert found["vendor-qpu"].value == "thirdparty:VendorQpu"
    finally:
        registry_module.registry.cache_clear()
