"""MkDocs hooks: the repository's READMEs as pages of the site, and the API
reference listed from kerastl's public names (a name without a docstring
fails the build)."""

from __future__ import annotations

import ast
import os
import re

import griffe
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pages made from files outside docs/, and the links that name those files.
PAGES = {
    "readme.md": "README.md",
    "results.md": "bench/README.md",
    "deploying.md": "export/README.md",
    "tests.md": "tests/README.md",
}
LINKS = {source: page for page, source in PAGES.items()}
MARKER = "<!-- kerastl: public names -->"


def on_files(files, config):
    for page, source in PAGES.items():
        with open(os.path.join(ROOT, source)) as file:
            text = file.read()
        files.append(File.generated(config, page, content=_relinked(text)))
    return files


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, _api_reference())


def _relinked(text: str) -> str:
    """README links into docs/ and to the other READMEs, as the site's pages."""

    def target(match):
        link = match.group(1)
        if link.startswith("docs/"):
            link = link[len("docs/") :]
        link = LINKS.get(link, link)
        return f"]({link})"

    return re.sub(r"\]\(([^)#]+)\)", target, text)


def _public_names() -> dict[str, str]:
    """`kerastl._EXPORTS`, read from the source (no TensorFlow import)."""
    with open(os.path.join(ROOT, "kerastl", "__init__.py")) as file:
        tree = ast.parse(file.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "_EXPORTS":
            return ast.literal_eval(node.value)
    raise PluginError("kerastl/__init__.py defines no _EXPORTS")


def _api_reference() -> str:
    package = griffe.load("kerastl", search_paths=[ROOT])
    sections, undocumented = [], []
    for name, module in sorted(_public_names().items(), key=lambda item: item[0].lower()):
        path = module if name == "export" else f"{module}.{name}"
        found = package[path[len("kerastl.") :]]
        if found.is_alias:
            found = found.final_target
        if not found.docstring or not found.docstring.value.strip():
            undocumented.append(path)
        sections.append(f"## `kerastl.{name}`\n\n::: {found.path}\n")
    if undocumented:
        raise PluginError(f"Public names without a docstring: {undocumented}")
    return "\n".join(sections)
