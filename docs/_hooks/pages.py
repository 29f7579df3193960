"""MkDocs hook: pages made from files outside docs/, and links that leave docs/.

- Each ``plugins/*/README.md`` (found by glob: a new plugin gets its page with
  no edit here) and the plugin template's README become a page under
  ``plugins/``, followed by the API reference of the plugin's options (its
  ``options`` module, or the package when it has none). ``CHANGELOG.md`` and
  ``RELEASING.md`` become ``changelog.md`` and ``releasing.md``.
- A relative link is read from where its file lives in the repository, so that
  the same Markdown reads right on the forge and on the site. One that leaves
  docs/ is pointed at the page made from its target (a plugin's folder or
  README, ``core/``, a module an API reference page documents), or else, as
  the site cannot serve it, written as the repository path it names. A link to
  a file that does not exist is an error, which ``--strict`` turns into a
  failed build.
"""

from __future__ import annotations

import logging
import posixpath
import re
import tomllib
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.pages")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# A Markdown link or image: [text](target "title"); the target has no spaces or parentheses.
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^()\s]+)(\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
REFERENCE = re.compile(r"^:::\s+([\w.]+)", re.M)


INSTALL = """
!!! note "Install"
    From a checkout of microbroker's repository: `pip install ./core ./{folder}`.
    Once it is published on PyPI: `pip install {name}`.
"""


def _install_note(folder: Path) -> str:
    """How to install a plugin from a checkout and by name, for the top of its page."""
    name = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["name"]
    return INSTALL.format(folder=folder.relative_to(ROOT).as_posix(), name=name)


def _after_title(text: str, inserted: str) -> str:
    head, sep, rest = text.partition("\n")
    return f"{head}\n{inserted}{rest}" if sep and head.startswith("# ") else inserted + text


def _generated() -> dict[str, tuple[Path, str]]:
    """Each page made here: its path in the site's docs -> (its source file, text appended)."""
    pages: dict[str, tuple[Path, str]] = {}
    folders = [*sorted(p.parent for p in ROOT.glob("plugins/*/README.md"))]
    folders.append(ROOT / "examples" / "plugin-template")
    for folder in folders:
        packages = sorted(p.parent for p in folder.glob("src/*/__init__.py"))
        reference = ""
        for package in packages:
            module = package.name + (".options" if (package / "options.py").exists() else "")
            reference += f"\n::: {module}\n"
        name = "template" if folder.parent.name == "examples" else folder.name
        appended = f"\n\n## API reference\n{reference}" if reference else ""
        pages[f"plugins/{name}.md"] = (folder / "README.md", appended)
    pages["changelog.md"] = (ROOT / "CHANGELOG.md", "")
    pages["releasing.md"] = (ROOT / "RELEASING.md", "")
    return pages


PAGES = _generated()


def on_config(config: Any) -> Any:
    """List the plugin pages in the nav's (empty) Plugins section."""
    for entry in config["nav"]:
        if isinstance(entry, dict) and "Plugins" in entry:
            entry["Plugins"] = [page for page in PAGES if page.startswith("plugins/")]
    return config


def on_files(files: Files, config: Any) -> Files:
    for page, (source, appended) in PAGES.items():
        if not source.exists():
            log.warning("%s: %s does not exist", page, source.relative_to(ROOT))
            continue
        text = source.read_text()
        if source.parent.parent.name == "plugins":
            text = _after_title(text, _install_note(source.parent))
        files.append(File.generated(config, page, content=text + appended))
    return files


def _documented_modules() -> dict[str, str]:
    """Each module an API reference page documents (``::: module``) -> that page."""
    found: dict[str, str] = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        for module in REFERENCE.findall(page.read_text()):
            found.setdefault(module, f"reference/{page.name}")
    return found


def _page_for(target: Path, modules: dict[str, str]) -> str | None:
    """The page (a path in the site's docs) made from or documenting ``target``, if any."""
    for page, (source, _) in PAGES.items():
        if target in (source, source.parent):
            return page
    if target in (ROOT / "core", ROOT / "core" / "README.md", ROOT / "README.md"):
        return "index.md"
    for src in [ROOT / "core" / "src", *ROOT.glob("plugins/*/src")]:
        if target.is_relative_to(src) and target.suffix == ".py":
            parts = list(target.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            page = modules.get(".".join(parts))
            if page is not None:
                return page
    return None


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    uri = page.file.src_uri
    source = PAGES[uri][0] if uri in PAGES else DOCS / uri
    modules = _documented_modules()

    def rewrite(match: re.Match[str]) -> str:
        bang, text, target, title = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return match.group(0)  # absolute, an anchor on this page, or site-absolute
        path, hash_, anchor = target.partition("#")
        resolved = Path(posixpath.normpath((source.parent / path).as_posix()))
        made_here = resolved.is_relative_to(DOCS) and resolved.relative_to(DOCS).as_posix() in PAGES
        if not resolved.exists() and not made_here:
            log.warning("%s: the link %r names %s, which does not exist", uri, target, resolved)
            return match.group(0)
        if resolved.is_relative_to(DOCS) and uri not in PAGES:
            return match.group(0)  # a page of the site: mkdocs checks it, anchors included
        if resolved.is_relative_to(DOCS):
            # A generated page links into docs/: relative to where the page is in the site.
            inside = resolved.relative_to(DOCS).as_posix()
        else:
            inside = _page_for(resolved, modules) or ""
        if inside:
            relative = posixpath.relpath(inside, posixpath.dirname(uri) or ".")
            return f"{bang}[{text}]({relative}{hash_}{anchor}{title or ''})"
        # Not on the site: name the repository path instead (a picture cannot be named).
        repo_path = resolved.relative_to(ROOT).as_posix()
        if bang:
            log.warning("%s: the image %s is not in docs/", uri, repo_path)
            return match.group(0)
        if text.strip("`") == repo_path or text.strip("`").rstrip("/") == repo_path:
            return f"`{repo_path}`"
        return f"{text} (`{repo_path}` in the repository)"

    out: list[str] = []
    fenced = False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else LINK.sub(rewrite, line))
    return "".join(out)
