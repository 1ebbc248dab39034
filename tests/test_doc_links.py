"""Every link between our own documents resolves: the file exists, and so does the heading
an anchor names (GitHub's rule for heading anchors). Links to the web are not fetched."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def documents() -> list[Path]:
    return sorted(
        p for p in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("examples/*/README.md")] if p.exists()
    )


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            slug = anchor(match.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(path: Path) -> list[str]:
    problems = []
    for match in LINK.finditer(FENCE.sub("", path.read_text())):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{path.relative_to(ROOT)}: {target}: no heading with that anchor")
    return problems


def test_links_between_our_documents_resolve():
    assert len(documents()) >= 5
    assert [problem for doc in documents() for problem in broken_links(doc)] == []


def test_the_anchor_rule():
    assert anchor("Use it from your Django project") == "use-it-from-your-django-project"
    assert anchor("Failures, retries and the scheduler") == "failures-retries-and-the-scheduler"
    assert anchor("`make test` on 2 cores") == "make-test-on-2-cores"
    assert anchor("Fair dispatch (issue 28)") == "fair-dispatch-issue-28"
