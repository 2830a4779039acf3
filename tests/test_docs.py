"""The documentation holds together: every relative link resolves, the README stays a front page."""
import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[str]:
    return [os.path.join(REPO, "README.md"), os.path.join(REPO, "ARCHITECTURE.md"),
            os.path.join(REPO, "benchmarks", "RESULTS.md")] + sorted(
                glob.glob(os.path.join(REPO, "docs", "*.md")))


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces → hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_slug_follows_githubs_rule():
    assert slug("Crashes, resuming and the workdir lock") == "crashes-resuming-and-the-workdir-lock"
    assert slug("Restoring a folder of images (`--mode=sample`)") == \
        "restoring-a-folder-of-images---modesample"
    assert slug("GPU results: NVIDIA H200, 2026-11-27") == "gpu-results-nvidia-h200-2026-11-27"


def _anchors(path: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", open(path, encoding="utf-8").read(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
    return anchors


def test_every_relative_link_resolves_to_a_file_and_heading():
    bad = []
    for page in _pages():
        for target in LINK.findall(_prose(open(page, encoding="utf-8").read())):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) \
                if file_part else page
            where = f"{os.path.relpath(page, REPO)} → {target}"
            if not os.path.exists(dest):
                bad.append(f"{where}: no such file")
            elif anchor and (not dest.endswith(".md") or anchor not in _anchors(dest)):
                bad.append(f"{where}: no such heading")
    assert not bad, "\n".join(bad)


def test_checker_finds_a_broken_link_and_a_missing_heading(tmp_path):
    """The checker itself: a missing file and a missing heading are both reported."""
    (tmp_path / "a.md").write_text("# Top\n\n[ok](#top) [gone](b.md) [bad](#nowhere)\n`[x](y)`\n")
    links = LINK.findall(_prose((tmp_path / "a.md").read_text()))
    assert links == ["#top", "b.md", "#nowhere"]
    assert _anchors(str(tmp_path / "a.md")) == {"top"}


def test_readme_is_a_front_page():
    """README.md: at most 300 lines, the rest lives in docs/ (listed in docs/README.md)."""
    lines = open(os.path.join(REPO, "README.md"), encoding="utf-8").read().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail into docs/"
    index = open(os.path.join(REPO, "docs", "README.md"), encoding="utf-8").read()
    for page in glob.glob(os.path.join(REPO, "docs", "*.md")):
        name = os.path.basename(page)
        assert name == "README.md" or f"]({name})" in index, f"docs/README.md does not list {name}"


def test_configs_md_names_every_key_of_default_py():
    """docs/configs.md's key table names every key of configs/default.py in its section's row."""
    from rdbm_jax import config_files

    text = open(os.path.join(REPO, "docs", "configs.md"), encoding="utf-8").read()
    missing = []
    for section, value in config_files.load(os.path.join(REPO, "configs", "default.py")).items():
        row = re.search(rf"^\| `{section}` \|(.*)$", text, flags=re.M)
        keys = list(value.keys()) if hasattr(value, "keys") else []
        if row is None:
            missing.append(section)
            continue
        missing += [f"{section}.{k}" for k in keys if f"`{k}`" not in row.group(1)]
    assert not missing, f"docs/configs.md's key table lacks {missing}"
