"""The chat page's vendored libraries (static/vendor/) are what ui-vendor/package-lock.json pins: each
file as `make vendor` copied it, with its package's version and licence, served by the service itself
(issue #15)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from testkit.processes import ROOT
from tests.conftest import AppClient
from ui import STATIC_DIR

VENDOR = STATIC_DIR / "vendor"
SOURCES = ROOT / "ui-vendor"
# Each library's build names its version in its opening comment.
BANNERS = {
    "marked/marked.esm.js": re.compile(r"\A/\*\*\n \* marked v(\S+) - "),
    "dompurify/purify.es.js": re.compile(r"\A/\*! @license DOMPurify (\S+) \| "),
}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def vendored() -> dict[str, Any]:
    manifest: dict[str, Any] = read_json(VENDOR / "vendored.json")
    return manifest


def test_vendored_packages_are_the_pinned_ones(vendored: dict[str, Any]) -> None:
    manifest = read_json(SOURCES / "package.json")
    lock = read_json(SOURCES / "package-lock.json")["packages"]

    assert set(vendored) == set(manifest["dependencies"])
    for name, entry in vendored.items():
        pinned = lock[f"node_modules/{name}"]
        assert manifest["dependencies"][name] == pinned["version"], f"{name} is not pinned to one version"
        assert (entry["version"], entry["license"], entry["integrity"]) == (
            pinned["version"],
            pinned["license"],
            pinned["integrity"],
        ), name


def test_vendored_files_are_as_copied_and_name_their_pinned_version(vendored: dict[str, Any]) -> None:
    recorded = {
        path: (name, file) for name, entry in vendored.items() for path, file in entry["files"].items()
    }
    on_disk = {path.relative_to(VENDOR).as_posix() for path in VENDOR.rglob("*") if path.is_file()}

    assert on_disk == {*recorded, "vendored.json"}, "a file in static/vendor/ that `make vendor` did not copy"
    for path, (_, file) in recorded.items():
        digest = hashlib.sha256((VENDOR / path).read_bytes()).hexdigest()
        assert digest == file["sha256"], f"{path} differs from the package's file"
    for path, banner in BANNERS.items():
        name, _ = recorded[path]
        found = banner.match((VENDOR / path).read_text(encoding="utf-8"))
        assert found, f"{path} does not open with its version"
        assert found.group(1) == vendored[name]["version"], path


def test_every_vendored_package_ships_its_licence_text(vendored: dict[str, Any]) -> None:
    for name, entry in vendored.items():
        licences = [path for path in entry["files"] if Path(path).name.startswith("LICENSE")]
        assert licences, f"{name} has no licence file beside it"
        texts = " ".join((VENDOR / path).read_text(encoding="utf-8") for path in licences)
        if "MIT" in entry["license"]:
            assert "Permission is hereby granted, free of charge" in texts, name
        if "Apache-2.0" in entry["license"]:
            assert "Apache License" in texts, name
        if "MPL-2.0" in entry["license"]:
            assert "Mozilla Public License Version 2.0" in texts, name


async def test_vendored_libraries_are_served_by_the_service_as_javascript(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    vendored = read_json(VENDOR / "vendored.json")
    paths = ["markdown.js"] + [f"vendor/{path}" for entry in vendored.values() for path in entry["files"]]
    async with app_client(make_settings()) as client:
        answers = {path: await client.get(f"/ui/{path}") for path in paths}

    scripts = {path for path in paths if path.endswith(".js")}
    assert scripts == {"markdown.js", "vendor/marked/marked.esm.js", "vendor/dompurify/purify.es.js"}
    for path, answer in answers.items():
        assert answer.status_code == 200, path
        assert answer.headers["x-content-type-options"] == "nosniff", path
        # Module scripts: browsers refuse one served without a JavaScript type. The licences: text.
        wanted = "text/javascript" if path in scripts else "text/plain"
        assert answer.headers["content-type"].startswith(wanted), (path, answer.headers["content-type"])
