"""The documentation stays true to the repository: links resolve, the README stays a guide, nothing points outside.

Fast and import-free (no torch): plain text checks on README.md, docs/*.md and the other hand-written markdown.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 450
RESULTS_HEADING = "## Current results"  # the one README section where commit hashes belong


def owned_markdown() -> list[Path]:
    """The hand-written guides: README, docs/, and the work folders' and benchmarks' own READMEs."""
    files = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "export" / "README.md",
             ROOT / "engines" / "cpp" / "README.md", *sorted((ROOT / "calib").glob("*.md")),
             ROOT / "benchmarks" / "README.md"]
    return [f for f in files if f.is_file()]


# --- markdown parsing -------------------------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"""<a\b[^>]*?\b(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, file:, ...


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    out, fenced = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            if fenced is None:
                fenced = fence.group(1)
            elif fence.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            out.append((number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        found += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        found += [(number, m.group(1)) for m in HTML_LINK.finditer(line)]
        ref = REFERENCE_LINK.match(line)
        if ref:
            found.append((number, ref.group(1)))
    return found


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    result = set()
    fenced = None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence:
            fenced = fence.group(1) if fenced is None else (None if fence.group(1) == fenced else fenced)
            continue
        if fenced is not None:
            continue
        result.update(m.group(1) for m in HTML_ANCHOR.finditer(line))
        heading = HEADING.match(line)
        if heading:
            slug = github_slug(heading.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def inside_repo(target: Path) -> bool:
    try:
        target.resolve().relative_to(ROOT)
    except ValueError:
        return False
    return True


def resolve(source: Path, link: str) -> tuple[Path, str]:
    """The file a relative link names (a leading '/' is the repository root, as on GitHub) and its anchor."""
    path, _, anchor = link.partition("#")
    path = path.split("?", 1)[0]
    if not path:
        return source, anchor
    base = ROOT if path.startswith("/") else source.parent
    return (base / path.lstrip("/")), anchor


def link_problems(path: Path) -> list[str]:
    problems = []
    for number, link in links(path):
        where = f"{path.relative_to(ROOT)}:{number}: {link}"
        if link.startswith("file:"):
            problems.append(f"{where}: a file: link points outside the repository")
            continue
        if EXTERNAL.match(link):
            continue
        target, anchor = resolve(path, link)
        if not inside_repo(target):
            problems.append(f"{where}: points outside the repository")
        elif not target.exists():
            problems.append(f"{where}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            problems.append(f"{where}: no heading with anchor #{anchor} in {target.relative_to(ROOT)}")
    return problems


# --- the checks -------------------------------------------------------------------------------------------------

def test_every_relative_link_and_anchor_in_the_guides_resolves():
    files = owned_markdown()
    assert README in files and any(f.parent.name == "docs" for f in files)
    problems = [p for f in files for p in link_problems(f)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_a_guide_not_a_notebook():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move depth to docs/"


def test_the_readme_carries_the_ci_test_command_verbatim():
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line.strip()]
    command = ci[-1]
    assert command in README.read_text(encoding="utf-8").splitlines(), (
        "README.md must contain .ci/run's last line, byte for byte, as its own line:\n" + command)


HEX_TOKEN = re.compile(r"\b(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{7,40}\b")


def test_commit_hashes_appear_only_in_the_readme_results_table():
    lines = README.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == RESULTS_HEADING]
    assert len(starts) == 1, f"README.md needs exactly one '{RESULTS_HEADING}' section"
    end = next((i for i in range(starts[0] + 1, len(lines)) if re.match(r"^#{1,2}\s", lines[i])), len(lines))
    outside = [(i + 1, line) for i, line in enumerate(lines) if not starts[0] <= i < end]
    found = [f"README.md:{n}: {m.group(0)}" for n, line in outside for m in HEX_TOKEN.finditer(line)]
    assert not found, "commit-hash-like tokens outside the results table:\n" + "\n".join(found)


def tracked(suffixes: tuple[str, ...]) -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked-file list")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    names = [n for n in out.decode("utf-8", "surrogateescape").split("\0") if n]
    return [ROOT / n for n in names if n.endswith(suffixes) and (ROOT / n).is_file()]


OUTSIDE_PATH = re.compile(r"(?:\.\./|/work/)shared\b[^\s`'\")\]]*")  # the workplace's notes beside the checkout


def test_no_tracked_file_points_outside_the_repository():
    problems = []
    for path in tracked((".md", ".py", ".yaml", ".yml", ".toml")):
        if path == Path(__file__).resolve():
            continue  # this file names what it looks for
        text = path.read_text(encoding="utf-8", errors="replace")
        problems += [f"{path.relative_to(ROOT)}:{n}: {m.group(0)}"
                     for n, line in enumerate(text.splitlines(), 1) for m in OUTSIDE_PATH.finditer(line)]
        if path.suffix == ".md":
            for number, link in links(path):
                if link.startswith("file:") or (not EXTERNAL.match(link)
                                                and not inside_repo(resolve(path, link)[0])):
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {link} is outside the repository")
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


def test_no_tracked_file_cites_a_design_document_the_repository_lacks():
    files = tracked((".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cpp", ".hpp"))
    if any(path.name == "DESIGN.md" for path in files):
        pytest.skip("the repository has a DESIGN.md")
    cites = [f"{path.relative_to(ROOT)}:{n}"
             for path in files
             for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if "DESIGN.md" in line and path != Path(__file__).resolve()]
    assert not cites, "cites DESIGN.md, which is not in the repository:\n" + "\n".join(cites)
