"""Model names: one identity on every back end (byte-exact after NFC), always a safe path."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from rankengine.cli import cli
from rankengine.errors import ArtifactError
from rankengine.registry import NotFoundError, RegistryError, RegistryStore, check_model_name
from rankengine.registry.artifacts import artifact_dir, inside

NFC = unicodedata.normalize("NFC", "démo")
NFD = unicodedata.normalize("NFD", "démo")


def ready_in(store: RegistryStore, root: Path, model: str) -> Path:
    """A ready version of ``model`` whose artifact folder this call creates (never reuses)."""
    v = store.create_version(model, config={}, task_graph={}, plugins={}, data_fingerprint={})
    folder = artifact_dir(root, model, v.version)
    folder.mkdir(parents=True)  # raises if another version already owns the folder
    (folder / "owner.txt").write_text(v.ref)
    store.mark_ready(v.model, v.version, artifact_uri=folder.as_uri(),
                     artifact_sha256="0" * 64, artifact_size=1, metrics={})
    return folder


def test_names_differing_in_case_or_accents_are_distinct_models_and_nfd_is_nfc(
        store: RegistryStore, tmp_path: Path) -> None:
    assert NFC != NFD
    root = tmp_path / "artifacts"
    folders = [ready_in(store, root, name) for name in (NFC, NFD, "Demo", "demo", "DEMO")]
    assert sorted(m.name for m in store.list_models()) == sorted([NFC, "Demo", "demo", "DEMO"])
    assert [v.version for v in store.list_versions(NFC)] == [1, 2]
    assert store.list_versions(NFD) == store.list_versions(NFC)
    for name in ("Demo", "demo", "DEMO"):
        assert [v.ref for v in store.list_versions(name)] == [f"{name}/1"]
    assert len(set(folders)) == 5 and all(f.is_dir() for f in folders)
    demo = store.resolve("demo")
    assert demo.ref == "demo/1" and demo.artifact_uri == folders[3].as_uri()
    assert (folders[3] / "owner.txt").read_text() == "demo/1"
    assert store.resolve(f"{NFD}/2").model == NFC
    store.set_alias(NFD, "champion", 2)
    assert store.resolve(f"{NFC}@champion").version == 2
    with pytest.raises(NotFoundError, match="has no alias 'champion'"):
        store.resolve("Demo@champion")
    with pytest.raises(NotFoundError, match="no model named 'dEMO'"):
        store.get_model("dEMO")


def test_aliases_are_exact_too(store: RegistryStore, tmp_path: Path) -> None:
    ready_in(store, tmp_path, "m")
    ready_in(store, tmp_path, "m")
    store.set_alias("m", "Champion", 1)
    store.set_alias("m", "champion", 2)
    assert store.get_model("m").aliases == {"Champion": 1, "champion": 2}
    assert store.resolve("m@champion").version == 2


@pytest.mark.parametrize("name", ["demo", NFC, "Model-2.v1_x", "模型", "a" * 100, "v1.0",
                                  "a..b", "CONSOLE", "com10"])
def test_good_names(name: str) -> None:
    assert check_model_name(name) == unicodedata.normalize("NFC", name)


@pytest.mark.parametrize("name", [
    "", ".", "..", "...", ".hidden", "-x", "_x", "a/b", "a\\b", "a b", "a@b", "demo.",
    "CON", "nul.txt", "com1", "LPT9", "a" * 101, "\U0001d49c" * 51, "a\x00", "a\nb", "😀",
    "a:b", "a*b", "a%2e",
])
def test_bad_names_are_one_line_errors(name: str) -> None:
    with pytest.raises(RegistryError, match=r"^invalid model name .*; a model name is 1-100 "
                                            r"characters") as info:
        check_model_name(name)
    assert "\n" not in str(info.value)


def test_the_store_refuses_path_names_everywhere(store: RegistryStore) -> None:
    for name in (".", "..", "../x"):
        with pytest.raises(RegistryError, match="invalid model name"):
            store.create_version(name, config={}, task_graph={}, plugins={},
                                 data_fingerprint={})
        with pytest.raises(RegistryError, match="invalid model name"):
            store.resolve(f"{name}/1")
        with pytest.raises(RegistryError, match="invalid model name"):
            store.list_versions(name)
    v = store.create_version("m", config={}, task_graph={}, plugins={}, data_fingerprint={})
    store.mark_ready("m", v.version, artifact_uri="file:///x", artifact_sha256="0" * 64,
                     artifact_size=1, metrics={})
    with pytest.raises(RegistryError, match=r"invalid alias '\.\.'"):
        store.set_alias("m", "..", 1)
    assert store.table_names() and [m.name for m in store.list_models()] == ["m"]


def test_artifact_paths_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    assert artifact_dir(root, "demo", 3) == (root / "demo" / "3").resolve()
    for name in (".", ".."):
        with pytest.raises(RegistryError, match="invalid model name"):
            artifact_dir(root, name, 1)
    with pytest.raises(ArtifactError, match="not inside the artifact root"):
        inside(root, root / "demo" / ".." / "..")
    with pytest.raises(ArtifactError, match="not inside the artifact root"):
        inside(root, root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    os.symlink(elsewhere, root / "linked")  # a model folder that leads out of the root
    with pytest.raises(ArtifactError, match="not inside the artifact root"):
        artifact_dir(root, "linked", 1)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_models_delete_never_removes_another_models_artifact(registry_url: str,
                                                            tmp_path: Path) -> None:
    store = RegistryStore(registry_url)
    root = tmp_path / "artifacts"
    other = ready_in(store, root, "other")
    # A row whose artifact is some other model's folder (hand-edited, or written by a
    # rankengine that accepted the model name '.'): deleting it must not touch that folder.
    v = store.create_version("m", config={}, task_graph={}, plugins={}, data_fingerprint={})
    store.mark_ready("m", v.version, artifact_uri=other.as_uri(), artifact_sha256="0" * 64,
                     artifact_size=1, metrics={})
    code, out = invoke("models", "delete", "m/1", "--yes", "--url", registry_url)
    assert code == 1 and "refusing to delete it" in out and "Traceback" not in out
    assert (other / "owner.txt").is_file()
    assert store.get_version("m", 1).status == "ready"  # nothing deleted
    mine = ready_in(store, root, "m")
    code, out = invoke("models", "delete", "m/2", "--yes", "--url", registry_url)
    assert code == 0 and "deleted m/2" in out and not mine.exists()
    for bad in ("../1", "./1"):
        code, out = invoke("models", "delete", bad, "--yes", "--url", registry_url)
        assert code == 1 and "invalid model name" in out and len(out.splitlines()) == 1
    code, out = invoke("models", "delete", "..", "--yes", "--url", registry_url)
    assert code == 2 and "names a model, not a version" in out and len(out.splitlines()) == 1
    assert (other / "owner.txt").is_file()
    store.close()
