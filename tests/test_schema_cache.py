"""cwltool's loaded CWL schemas are kept between runs (qflow/engine/schema_cache.py): what a
run reads back is what it would have loaded, and a bad or foreign cache file is not used."""

from __future__ import annotations

from pathlib import Path

import pytest
from cwltool.process import SCHEMA_CACHE

from conftest import REPO, deployment_from, run_in_process
from qflow.engine.schema import install_schemas
from qflow.engine.schema_cache import CACHED_VERSIONS, cache_dir, load_schemas

LOOP = REPO / "benchmarks" / "cwl" / "loop.cwl"


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return cache_dir()


def _forget() -> None:
    for version in CACHED_VERSIONS:
        SCHEMA_CACHE.pop(version, None)


def test_a_run_reads_back_the_schemas_an_earlier_one_loaded(own_cache: Path, tmp_path: Path):
    install_schemas()  # nothing kept yet: loads, and keeps them
    loaded = {version: SCHEMA_CACHE[version] for version in CACHED_VERSIONS}
    kept = sorted(own_cache.iterdir())
    assert [p.name.split("-")[0] for p in kept] == list(CACHED_VERSIONS)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in kept)

    _forget()
    assert load_schemas() == list(CACHED_VERSIONS)
    for version in CACHED_VERSIONS:
        document_loader, names, metadata, metaschema_loader = SCHEMA_CACHE[version]
        fresh = loaded[version]
        assert document_loader is not fresh[0]
        assert sorted(names.names) == sorted(fresh[1].names)
        assert document_loader.vocab == fresh[0].vocab
        assert metadata == fresh[2]
        assert sorted(metaschema_loader.idx) == sorted(fresh[3].idx)
    extensions = SCHEMA_CACHE["v1.2"][0].vocab  # qflow's and cwltool's records
    assert "https://qflow.dev/ns#QuantumCandidate" in extensions
    assert "http://commonwl.org/cwltool#Loop" in extensions

    # a whole run on the schemas read back: a cwltool:Loop workflow
    result, outputs = run_in_process(
        LOOP, deployment_from("version: 1\nlocations: {here: {connector: local}}\n"
                              "bindings: {default: here}\n"), tmp_path / "out", "--count", "3"
    )  # fmt: skip
    assert result.status == "success" and outputs == {"o": 3}


def test_a_bad_or_foreign_cache_file_is_loaded_again_and_replaced(own_cache: Path):
    install_schemas()
    v10, v12 = (next(own_cache.glob(f"{v}-*.pickle")) for v in CACHED_VERSIONS)
    v10.write_bytes(b"not a pickle")
    v12.chmod(0o666)  # others may write it: unpickling it would run their code
    _forget()
    assert load_schemas() == []
    assert SCHEMA_CACHE["v1.0"] and SCHEMA_CACHE["v1.2"]  # loaded instead
    assert v12.stat().st_mode & 0o777 == 0o600  # rewritten by this user
    _forget()
    assert load_schemas() == list(CACHED_VERSIONS)
