"""What keeps a scatter of N steps linear in N (qflow/engine/cwltool_scale.py, issue 16):
cwltool's job names in O(1), the job order as plain data, jobs built only as fast as the
locations take them. Their cost is measured by benchmarks/scale.py, not here."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from cwltool.process import uniquename as cwltool_uniquename
from ruamel.yaml import YAML

from conftest import DATA, deployment_from, run_in_process
from qflow.engine import dispatcher as dispatcher_module
from qflow.engine.cwltool_scale import next_free_name
from qflow.engine.dispatcher import Dispatcher
from qflow.engine.executor import plain_data


def test_names_are_cwltools_own() -> None:
    """The same names, in the same order, as cwltool's linear search gives, also with names
    taken meanwhile by others (a stem that looks suffixed, a name taken out of turn)."""
    rng = random.Random(16)
    ours: set[str] = set()
    theirs: set[str] = set()
    suffixes: dict[str, int] = {}
    for _ in range(2000):
        if rng.random() < 0.1:  # someone else takes a name that a stem would come to
            taken = f"{rng.choice('ab')}_{rng.randint(2, 300)}"
            ours.add(taken)
            theirs.add(taken)
            continue
        stem = rng.choice(["a", "b", "a_2", "step a"])
        assert next_free_name(stem, ours, suffixes) == cwltool_uniquename(stem, theirs)
    assert ours == theirs


def test_job_order_becomes_plain_data() -> None:
    loaded = YAML(typ="rt").load(io.StringIO("items:\n  - 1\n  - {a: [2, 3]}\nname: x\n"))
    plain = plain_data(loaded)
    assert plain == {"items": [1, {"a": [2, 3]}], "name": "x"}
    assert type(plain) is dict and type(plain["items"]) is list
    assert type(plain["items"][1]) is dict and type(plain["items"][1]["a"]) is list


@pytest.mark.parametrize("slots", [1, 3])
def test_scatter_builds_jobs_as_fast_as_slots_take_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slots: int
) -> None:
    """A 60-way scatter on ``slots`` slots: never more than ``LOOKAHEAD`` executions wait for
    a slot (cwltool alone starts all 60 at once), and the outputs keep element order."""
    monkeypatch.setattr(dispatcher_module, "LOOKAHEAD", 4)
    waiting: list[int] = []
    place = Dispatcher.place

    def counting_place(self: Dispatcher, *args: object, **kwargs: object) -> object:
        future = place(self, *args, **kwargs)  # type: ignore[arg-type]
        waiting.append(len(self._placing))
        return future

    monkeypatch.setattr(Dispatcher, "place", counting_place)
    items = list(range(60))
    rng = random.Random(slots)
    rng.shuffle(items)
    job = tmp_path / "job.yml"
    job.write_text("items:\n" + "".join(f"  - {i}\n" for i in items))
    deployment = deployment_from(
        f"""
        version: 1
        locations:
          here: {{connector: local, slots: {slots}}}
        bindings:
          default: here
        """
    )
    result, outputs = run_in_process(DATA / "echo-scatter.cwl", deployment, tmp_path, str(job))
    assert result.exit_code == 0
    assert outputs == {"echoed": items}
    assert len(result.report["steps"]) == 60
    assert max(waiting) <= 4, waiting
    assert max(waiting) >= 1  # the slots were full at times: the bound was what held them
