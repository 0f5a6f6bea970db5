"""The dashboard's routes, in-process (no models load: the app's lifespan never runs): its files
are served, and only they; they are open while everything else still needs a key; and the
package ships every file the page refers to. The page itself is tested in a real browser in
tests/e2e/test_dashboard.py."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mmserve.api.app import create_app
from mmserve.api.middleware import is_open
from mmserve.config import load_settings

ROOT = Path(__file__).resolve().parents[3]
UI = ROOT / "src" / "mmserve" / "ui"
KEY = "k-unit-0123456789"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    config = tmp_path_factory.mktemp("ui") / "config.yaml"
    config.write_text(f"api_keys: [{KEY}]\nmodels: []\n")
    return TestClient(create_app(load_settings(config, env={})))


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("logo.svg", "image/svg+xml"),
    ],
)
def test_the_files_are_served_with_their_type(
    keyed: TestClient, name: str, media_type: str
) -> None:
    answer = keyed.get(f"/ui/{name}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == media_type
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.content == (UI / name).read_bytes()


def test_the_page_is_open_and_the_data_is_not(keyed: TestClient) -> None:
    page = keyed.get("/ui")
    assert page.status_code == 200 and "<title>mmserve</title>" in page.text
    assert keyed.get("/api/v1/").status_code == 401
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/api/v1/", headers={"x-api-key": KEY}).status_code == 200


def test_only_the_shipped_files_are_served(keyed: TestClient) -> None:
    assert keyed.get("/ui/nothing.js").status_code == 404
    assert keyed.get("/ui/__init__.py").status_code == 404
    # a path with more segments is not the dashboard's: it needs a key like any other
    assert keyed.get("/ui/x/../../api/v1/").status_code in (401, 404)


@pytest.mark.parametrize(
    ("path", "open_"),
    [
        ("/health", True),
        ("/ready", True),
        ("/", True),
        ("/ui", True),
        ("/ui/app.js", True),
        ("/ui/../api/v1/", False),
        ("/ui/a/b.js", False),
        ("/uix", False),
        ("/api/v1/", False),
        ("/metrics", False),
    ],
)
def test_which_paths_are_open(path: str, open_: bool) -> None:
    assert is_open(path) is open_


def test_a_browser_at_the_root_is_sent_to_the_page(keyed: TestClient) -> None:
    browser = keyed.get("/", headers={"accept": "text/html,*/*"}, follow_redirects=False)
    assert browser.status_code == 303 and browser.headers["location"] == "ui"
    assert keyed.get("/", headers={"accept": "application/json"}).status_code == 404


def test_every_file_the_page_names_exists_and_is_package_data() -> None:
    index = (UI / "index.html").read_text()
    named = set(re.findall(r'(?:src|href)="ui/([\w.-]+)"', index))
    for script in UI.glob("*.js"):
        named |= set(re.findall(r'from "\./([\w.-]+)"', script.read_text()))
    assert {"app.js", "style.css", "logo.svg", "models.js"} <= named
    missing = sorted(n for n in named if not (UI / n).is_file())
    assert not missing, f"the page refers to files that do not exist: {missing}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["mmserve"]
    shipped = [
        p.name for p in UI.iterdir() if any(fnmatch.fnmatch(f"ui/{p.name}", g) for g in patterns)
    ]
    assert sorted(shipped) == sorted(p.name for p in UI.iterdir()), "package-data misses a file"
