"""Every relative link in README.md, CHANGELOG.md, docker/README.md and docs/ points at a file that
exists, and every #anchor at a heading of its target, slugged as GitHub does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted({REPO / "README.md", REPO / "CHANGELOG.md", REPO / "docker" / "README.md",
                *(REPO / "docs").rglob("*.md")})
# Pages written in parallel on other branches: a link to one is accepted while it does not exist
# yet, and checked like any other once it does.
PENDING: set[Path] = set()

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> list[str]:
    """The page's lines outside fenced code blocks, inline code spans blanked (links in code are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(_prose(path.read_text(encoding="utf-8")), 1):
        line = re.sub(r"`[^`]*`", "", line)
        found += [(number, m.group(1)) for m in LINK.finditer(line)]
    return found


def broken(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(REPO)}:{number}: {target}"
        if not dest.exists():
            if dest not in PENDING:
                problems.append(f"{where}: {file_part} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    assert not broken(page), "\n".join(broken(page))


def test_slugs_follow_github():
    assert slug("## `forgetless run` exit codes".lstrip("# ")) == "forgetless-run-exit-codes"
    assert slug("`spec.training`") == "spectraining"
    assert slug("The quick start's recipe over seeds and threads") == "the-quick-starts-recipe-over-seeds-and-threads"
    assert slug("1. Install with Helm") == "1-install-with-helm"
    assert slug("Policy matrix, SmolLM2-135M-Instruct") == "policy-matrix-smollm2-135m-instruct"
    assert slug("self_distillation") == "self_distillation"


def test_the_checker_catches_a_broken_file_and_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "a.md").write_text("# Title\n\n## Two words\n\n[ok](#two-words) [bad](#three) [gone](b.md)\n"
                                   "```\n[in code](nowhere.md)\n```\n")
    problems = broken(tmp_path / "a.md")
    assert len(problems) == 2 and "#three" in problems[0] and "b.md does not exist" in problems[1]


def test_the_index_links_every_page_in_docs():
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    linked = {(REPO / "docs" / target.partition("#")[0]).resolve() for _, target in links(REPO / "docs" / "README.md")}
    unlisted = [p.relative_to(REPO) for p in (REPO / "docs").rglob("*.md")
                if p.name != "README.md" and p.resolve() not in linked]
    assert index and not unlisted, f"docs/README.md does not link {unlisted}"


def test_the_readme_shows_the_two_setup_commands_and_ci_runs_the_same_test_script():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert blocks[:1] == ["./scripts/quickstart.sh\n"] and "./scripts/test.sh\n" in blocks, blocks
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    last = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")][-1].strip()
    assert last in ("bash scripts/test.sh", "./scripts/test.sh", "scripts/test.sh"), last
    assert len(readme.splitlines()) <= 250, "README.md is a ten-minute read: keep it at most 250 lines"


def test_the_readmes_finetunejob_is_a_valid_manifest():
    import yaml

    from forgetless.api.manifests import validate_document

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    job = validate_document(yaml.safe_load(block))
    assert job.spec.mitigation.self_distillation is not None and job.spec.method.type == "lora"
