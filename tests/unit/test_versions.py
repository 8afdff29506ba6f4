"""One version for everything: pyproject.toml, forgetless.__version__, the chart's version and
appVersion; and CHANGELOG.md knows it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import forgetless

REPO = Path(__file__).resolve().parents[2]
VERSION = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")


def _pyproject_version(text: str) -> str:
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', project, re.M).group(1)


def versions() -> dict[str, str]:
    chart = yaml.safe_load((REPO / "charts" / "forgetless" / "Chart.yaml").read_text(encoding="utf-8"))
    return {
        "pyproject.toml [project].version": _pyproject_version((REPO / "pyproject.toml").read_text(encoding="utf-8")),
        "forgetless.__version__": forgetless.__version__,
        "charts/forgetless/Chart.yaml version": str(chart["version"]),
        "charts/forgetless/Chart.yaml appVersion": str(chart["appVersion"]),
    }


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("-")[0].split("+")[0].split("."))


def test_package_chart_and_app_versions_move_together():
    found = versions()
    assert all(VERSION.match(v) for v in found.values()), found
    assert len(set(found.values())) == 1, (
        f"versions differ: {found}; set the same X.Y.Z in all four places (see CHANGELOG.md)")


def test_changelog_follows_keep_a_changelog_and_knows_the_version():
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", text, re.M)
    assert headings, "CHANGELOG.md has no version sections"
    released = []
    for name, rest in headings:
        if name == "Unreleased":
            continue
        assert VERSION.match(name) and re.match(r"^ - \d{4}-\d{2}-\d{2}$", rest), f"## [{name}]{rest}: want ## [X.Y.Z] - YYYY-MM-DD"
        released.append(name)
    assert [h for h, _ in headings][0] == "Unreleased" or headings[0][0] == forgetless.__version__, (
        "the newest CHANGELOG section must be [Unreleased] or the package's version")
    assert released == sorted(released, key=_key, reverse=True), "CHANGELOG sections must go newest first"
    assert all(_key(v) <= _key(forgetless.__version__) for v in released), (
        f"CHANGELOG.md has a release newer than the package version {forgetless.__version__}: bump it (and the chart)")
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        kinds = re.findall(r"^### (.+)$", section, re.M)
        assert set(kinds) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
