"""Every relative link and #anchor in README.md and docs/**/*.md resolves inside the repository.

A link ``[text](path)``, ``[text](path#anchor)``, ``[text](#anchor)``, an image ``![alt](path)`` or a reference
definition ``[label]: path`` must name a file or directory inside the repository (never outside it, e.g.
``../shared``; never a path git ignores, which a clone lacks), and an anchor into a Markdown file must be the
GitHub anchor of one of its headings (:func:`github_anchors`). Links inside code spans and fenced blocks are
code, not links. External links (``https:``, ``mailto:``, ...) are not fetched: the tests run offline.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

from .conftest import DOC_FILES, DOC_IDS, REPO, split_markdown

_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[(?!\^)[^\]]+\]:[ \t]*(<[^>]*>|\S+)", re.MULTILINE)  # not a [^footnote]
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_HTML_ANCHOR = re.compile(r"<a\s+[^>]*?(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_LINE_ANCHOR = re.compile(r"L\d+(-L\d+)?")
"""GitHub's line anchors into a file that is not Markdown (``recipes/x.py#L10-L20``)."""


def slugify(heading: str) -> str:
    """GitHub's anchor for the text of one heading (github-slugger): lowercase; drop punctuation, symbols and
    control characters except ``-`` and ``_``; every space becomes ``-``. Letters of any script stay (``γ``)."""
    kept = [ch for ch in heading.strip().lower()
            if ch in "-_ " or unicodedata.category(ch)[0] not in "PSCZ"]
    return "".join(kept).replace(" ", "-")


def heading_text(markdown: str) -> str:
    """The rendered text of a heading's Markdown: code spans' content as is, links and images as their text, no
    HTML tags or emphasis markers."""
    parts = _CODE_SPAN.split(markdown)
    out = []
    for i in range(0, len(parts), 3):  # split yields text, fence, code, text, ...
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", parts[i])
        text = re.sub(r"</?[A-Za-z][^>]*>", "", text)
        text = re.sub(r"(?<!\w)(\*{1,3}|_{1,3})(\S(?:.*?\S)?)\1(?!\w)", r"\2", text)
        out.append(text)
        if i + 2 < len(parts):
            out.append(parts[i + 2])
    return "".join(out)


def github_anchors(text: str, name: str) -> set[str]:
    """The anchors GitHub gives the headings of the Markdown ``text`` (outside fenced code), duplicates numbered
    ``-1``, ``-2`` as github-slugger numbers them, plus explicit ``<a name=..>`` / ``<a id=..>`` anchors."""
    _, prose = split_markdown(text, name)
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose:
        anchors.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if match is None:
            continue
        slug = base = slugify(heading_text(match[2] or ""))
        while slug in seen:
            seen[base] += 1
            slug = f"{base}-{seen[base]}"
        seen[slug] = 0
        anchors.add(slug)
    return anchors


def links(text: str, name: str) -> list[tuple[int, str]]:
    """``(line, target)`` of every link, image and reference definition outside code spans and fenced blocks.

    Paragraphs are read whole, so a link whose text wraps onto the next line is found too.
    """
    _, prose = split_markdown(text, name)
    found = []
    for first, paragraph in _paragraphs(prose):
        # Blank out code spans, keeping offsets and newlines, so their brackets are not read as links.
        plain = _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), paragraph)
        for match in [*_INLINE_LINK.finditer(plain), *_REFERENCE.finditer(plain)]:
            found.append((first + plain.count("\n", 0, match.start(1)), match.start(1), match[1].strip("<>")))
    return [(line, target) for line, _, target in sorted(found)]


def _paragraphs(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``(first line, text)`` of each run of consecutive non-blank prose lines."""
    runs: list[tuple[int, list[str]]] = []
    previous = None
    for number, line in prose:
        if not line.strip():
            previous = None
            continue
        if previous is None or number != previous + 1:
            runs.append((number, []))
        runs[-1][1].append(line)
        previous = number
    return [(first, "\n".join(lines)) for first, lines in runs]


def link_errors(path: Path, repo: Path) -> list[str]:
    """What is wrong with the relative links of the Markdown file ``path``, one ``<file>:<line>: ...`` each."""
    name = path.relative_to(repo).as_posix()
    text = path.read_text(encoding="utf-8")
    errors, resolved, anchors = [], [], {}
    for line, target in links(text, name):
        if _SCHEME.match(target):
            continue  # external: not fetched
        where = f"{name}:{line}: link {target!r}"
        file_part, _, anchor = target.partition("#")
        file_part, anchor = unquote(file_part), unquote(anchor)
        if file_part.startswith("/"):
            errors.append(f"{where} is absolute; write it relative to {name}")
            continue
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.is_relative_to(repo.resolve()):
            errors.append(f"{where} leaves the repository ({repo}); a clone or an installed package lacks it")
        elif not dest.exists():
            errors.append(f"{where}: {dest.relative_to(repo.resolve())} does not exist")
        else:
            resolved.append((where, dest))
            if anchor:
                errors += _anchor_errors(where, dest, anchor, repo, anchors)
    return errors + _ignored(resolved, repo)


def _anchor_errors(where: str, dest: Path, anchor: str, repo: Path, cache: dict[Path, set[str]]) -> list[str]:
    """Whether ``anchor`` is in the file ``dest``; ``cache`` keeps each Markdown file's anchors."""
    if dest.suffix.lower() == ".md":
        if dest not in cache:
            cache[dest] = github_anchors(dest.read_text(encoding="utf-8"), dest.name)
        anchors = cache[dest]
        if anchor not in anchors:
            near = sorted(a for a in anchors if a[:4] == anchor[:4]) or sorted(anchors)[:10]
            return [f"{where}: no heading of {dest.relative_to(repo.resolve())} has the anchor #{anchor} "
                    f"(GitHub's anchors there include {near})"]
    elif not _LINE_ANCHOR.fullmatch(anchor):
        return [f"{where}: #{anchor} is no line anchor (#L10, #L10-L20) of a file that is not Markdown"]
    return []


def _ignored(resolved: list[tuple[str, Path]], repo: Path) -> list[str]:
    """The links whose targets git ignores (so a clone lacks them); none outside a git checkout."""
    if not resolved or not (repo / ".git").exists():
        return []
    paths = "\n".join(str(dest) for _, dest in resolved)
    out = subprocess.run(["git", "-C", str(repo), "check-ignore", "--stdin"], input=paths, capture_output=True,
                         text=True, check=False)
    ignored = set(out.stdout.splitlines())
    return [f"{where}: git ignores {dest.relative_to(repo.resolve())}; a clone lacks it"
            for where, dest in resolved if str(dest) in ignored]


@pytest.mark.parametrize("path", DOC_FILES, ids=DOC_IDS)
def test_relative_links_and_anchors_resolve_inside_the_repository(path):
    errors = link_errors(path, REPO)
    assert not errors, f"{len(errors)} broken links:\n" + "\n".join(errors)


# ---------------------------------------------------------------------------------------------- the checker itself
@pytest.mark.parametrize("heading, anchor", [
    ("The token-level length advantage", "the-token-level-length-advantage"),
    ("`LenVMCritic` in PPO", "lenvmcritic-in-ppo"),
    ("Choosing γ", "choosing-γ"),
    ("PPO with a LenVM critic", "ppo-with-a-lenvm-critic"),
    ("V <-> length <-> logit", "v---length---logit"),
    ("What's new? (v0.1, 2026-05-01)", "whats-new-v01-2026-05-01"),
    ("`length_gate=\"pass_rate\"` & friends", "length_gatepass_rate--friends"),
    ("Evaluating predictions: MSE / MRE", "evaluating-predictions-mse--mre"),
    ("[Results](results.md) **at scale**", "results-at-scale"),
    ("Qwen2.5-0.5B, 4 GPUs 🚀", "qwen25-05b-4-gpus-"),
    ("  Trailing spaces  ", "trailing-spaces"),
])
def test_the_slugger_gives_githubs_anchors(heading, anchor):
    assert slugify(heading_text(heading)) == anchor


def test_duplicate_headings_are_numbered_and_code_blocks_hold_no_headings():
    text = ("# Setup\n## Setup\n```bash\n# Setup\n```\n### Setup\n## Setup-1\n"
            "<a id=\"custom\"></a>\n#hashtag is no heading\n")
    # github-slugger: Setup, Setup-1, Setup-2, then a real "Setup-1" heading is taken and becomes setup-1-1.
    assert github_anchors(text, "x.md") == {"setup", "setup-1", "setup-2", "setup-1-1", "custom"}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_good_links_pass(tmp_path):
    write(tmp_path, {
        "README.md": ("# Top\n[m](docs/method.md#choosing-γ) [same](#top) [dir](docs/) ![p](docs/plot.png)\n"
                      "[ext](https://example.com/x#y) [mail](mailto:a@b.c) [l](docs/code.py#L3-L5) "
                      "[enc](docs/method.md#choosing-%CE%B3)\n[ref]: docs/method.md#the-model\n"
                      "`[code](missing.md)`\n```text\n[fenced](missing.md)\n```\n"),
        "docs/method.md": "# The method\n## Choosing γ\n## The model\n",
        "docs/plot.png": "png", "docs/code.py": "x = 1\n",
    })
    assert link_errors(tmp_path / "README.md", tmp_path) == []


def test_broken_links_are_reported_with_file_and_line(tmp_path):
    (tmp_path / "repo").mkdir()
    write(tmp_path, {"shared/LENVM.md": "# LenVM\n"})
    repo = tmp_path / "repo"
    write(repo, {
        "docs/rl.md": ("# RL\n\n[out](../../shared/LENVM.md) [gone](missing.md)\n"
                       "[anchor](method.md#choosing-gamma) [self](#nope) ![img](/abs.png)\n"
                       "[py](code.py#main) [code-heading](method.md#not-a-heading) and a\n"
                       "[wrapped\nlink](gone.md) `[a](span\nacross lines.md)`\n"),
        "docs/method.md": "# The method\n## Choosing γ\n```python\n# not-a-heading\n```\n",
        "docs/code.py": "x = 1\n",
    })
    errors = link_errors(repo / "docs/rl.md", repo)
    assert [e.split(":")[0] + ":" + e.split(":")[1] for e in errors] == ["docs/rl.md:3"] * 2 + ["docs/rl.md:4"] * 3 + [
        "docs/rl.md:5"] * 2 + ["docs/rl.md:7"]
    assert "'../../shared/LENVM.md' leaves the repository" in errors[0]
    assert "docs/missing.md does not exist" in errors[1]
    assert "no heading of docs/method.md has the anchor #choosing-gamma" in errors[2] and "choosing-γ" in errors[2]
    assert "no heading of docs/rl.md has the anchor #nope" in errors[3]
    assert "'/abs.png' is absolute" in errors[4]
    assert "#main is no line anchor" in errors[5]
    assert "#not-a-heading" in errors[6]
    assert "docs/gone.md does not exist" in errors[7]


def test_a_link_to_a_path_git_ignores_is_refused(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    write(tmp_path, {".gitignore": "results/\n", "results/table.csv": "a,b\n", "README.md": "[t](results/table.csv)\n"})
    assert link_errors(tmp_path / "README.md", tmp_path) == [
        "README.md:1: link 'results/table.csv': git ignores results/table.csv; a clone lacks it"]
