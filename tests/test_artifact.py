"""A standalone artifact that was damaged or planted: refused in one line, never followed out of
its folder, never loaded with silently cast weights."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from rankengine.artifact import MANIFEST, WEIGHTS, load_artifact, sha256_file
from rankengine.cli import cli
from rankengine.errors import ArtifactError

from .test_bad_input import CONFIG, HEADER, data_rows


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifact")
    (root / "train.csv").write_text("\n".join([HEADER, *(",".join(r) for r in data_rows())]))
    (root / "engine.toml").write_text(CONFIG.format(model="probe", dim="4", extra=""))
    result = CliRunner().invoke(cli, ["train", "-c", str(root / "engine.toml"), "-o",
                                      str(root / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "out"


def damaged(artifact: Path, tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    """A copy of the artifact edited, its manifest digests updated to match."""
    copy = tmp_path / "m"
    shutil.copytree(artifact, copy)
    edit(copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    for name in manifest["files"]:
        file = copy / name
        if file.is_file() and not file.is_symlink():
            manifest["files"][name] = sha256_file(file)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return copy


def test_a_file_linked_out_of_the_artifact_is_refused(artifact: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(artifact / WEIGHTS, outside)

    def link(copy: Path) -> None:
        (copy / WEIGHTS).unlink()
        (copy / WEIGHTS).symlink_to(outside)  # same bytes, same digest: still refused

    with pytest.raises(ArtifactError, match=rf"{WEIGHTS}: is a symbolic link"):
        load_artifact(damaged(artifact, tmp_path, link))


def test_a_config_linked_to_a_system_file_is_never_read(artifact: Path, tmp_path: Path) -> None:
    def link(copy: Path) -> None:
        (copy / "metrics.json").unlink()
        (copy / "metrics.json").symlink_to("/dev/zero")  # hashing it would never end

    with pytest.raises(ArtifactError, match=r"metrics\.json: is a symbolic link"):
        load_artifact(damaged(artifact, tmp_path, link))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, torch.bool])
def test_weights_of_another_dtype_are_refused_not_cast(artifact: Path, tmp_path: Path,
                                                       dtype: torch.dtype) -> None:
    def cast(copy: Path) -> None:
        state = load_file(str(copy / WEIGHTS))
        save_file({k: v.to(dtype) for k, v in state.items()}, str(copy / WEIGHTS))

    with pytest.raises(ArtifactError, match=rf"is {dtype}, the model expects torch\.float32"):
        load_artifact(damaged(artifact, tmp_path, cast))


def test_non_finite_weights_are_named_as_the_artifact_s_fault(artifact: Path,
                                                             tmp_path: Path) -> None:
    def poison(copy: Path) -> None:
        state = load_file(str(copy / WEIGHTS))
        key = sorted(state)[0]
        state[key] = torch.full_like(state[key], float("nan"))
        save_file(state, str(copy / WEIGHTS))

    with pytest.raises(ArtifactError, match=r"holds a value that is not a finite number"):
        load_artifact(damaged(artifact, tmp_path, poison))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.__setitem__("plugins", "builtin"), "'plugins' must map plugin names"),
    (lambda m: m.pop("plugins"), "'plugins' must map plugin names"),
    (lambda m: m["files"].pop("pipeline.json"), "'files' does not list pipeline.json"),
])
def test_a_malformed_manifest_is_one_error(artifact: Path, tmp_path: Path,
                                           edit: Callable[[dict], object], message: str) -> None:
    def change(copy: Path) -> None:
        manifest = json.loads((copy / MANIFEST).read_text())
        edit(manifest)
        (copy / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(ArtifactError, match=message):
        load_artifact(damaged(artifact, tmp_path, change))


def test_a_damaged_fitted_state_names_the_file_and_feature(artifact: Path,
                                                           tmp_path: Path) -> None:
    def change(copy: Path) -> None:
        state = json.loads((copy / "pipeline.json").read_text())
        state["item_price"]["std"] = None
        (copy / "pipeline.json").write_text(json.dumps(state))

    copy = damaged(artifact, tmp_path, change)
    result = CliRunner().invoke(cli, ["evaluate", str(copy), "--data", "x.csv"])
    assert result.exit_code != 0
    assert result.stderr.strip() == (
        f"Error: {copy / 'pipeline.json'}: fitted state of feature 'item_price' (kind numeric): "
        f"'std' must be a finite number > 0, found None")
