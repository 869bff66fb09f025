"""The documentation site (docs/, mkdocs.yml) and the README as its front page: the site builds
with `mkdocs build --strict` (every link and anchor resolves, every page is in the nav), the
configuration reference names every variable and YAML key the settings read (taken from the
code, so a new one without a doc line fails here), and the README stays short with links that
resolve."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keygate.config.catalog import env_names
from keygate.config.provider_config import TUNABLE

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / "src" / "keygate" / "config" / "settings.py"
REFERENCE = ROOT / "docs" / "configuration.md"
# Read outside the settings module but documented with them: asyncpg reads PGPASSWORD, the
# listener KEYGATE_REUSEPORT.
ALSO_DOCUMENTED = {"PGPASSWORD", "KEYGATE_REUSEPORT"}


def _strings(node: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def settings_env_names(source: str) -> set[str]:
    """Every environment variable the settings module reads: the name given to `env.get(...)`,
    `env[...]` or an `_env_*(env, ...)` helper (a literal, or a local variable assigned
    literals), and a provider's per-name forms from `env_names(name, SUFFIX)` written with
    `<NAME>` for the provider."""
    tree = ast.parse(source)
    assigned: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, set()).update(_strings(node.value))

    def literal(arg: ast.expr) -> set[str]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return {arg.value}
        if isinstance(arg, ast.Name):
            return assigned.get(arg.id, set())
        return set()

    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "get"
                and isinstance(func.value, ast.Name)
                and func.value.id == "env"
                and node.args
            ):
                names |= literal(node.args[0])
            elif isinstance(func, ast.Name) and func.id.startswith("_env_") and len(node.args) > 1:
                names |= literal(node.args[1])
            elif isinstance(func, ast.Name) and func.id == "env_names":
                for suffix in literal(node.args[1]):
                    names |= {
                        n.replace("PROVIDER", "<NAME>") for n in env_names("PROVIDER", suffix)
                    }
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "env"
        ):
            names |= literal(node.slice)
    # a name built at run time (`env[base_vars[0]]`) is one of the env_names forms above
    return {n for n in names if re.fullmatch(r"[A-Z<>][A-Z0-9_<>]*", n)}


def settings_yaml_keys(source: str) -> set[str]:
    """Every YAML key the settings accept: the provider fields (`TUNABLE`) and the literal sets
    of allowed keys the module checks a mapping against (`set(data) - {...}`)."""
    keys = set(TUNABLE)

    def from_set_call(node: ast.expr) -> bool:
        while isinstance(node, ast.BinOp):
            node = node.left
        return (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "set"
        )

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and from_set_call(node):
            right = node.right
            if isinstance(right, ast.Set) and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in right.elts
            ):
                keys |= {e.value for e in right.elts}  # type: ignore[union-attr]
    return keys


def documented_rows(text: str) -> set[str]:
    """The names that have a row of their own in a reference table: `| `NAME` | ... |`."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.M))


def test_the_reference_names_every_variable_the_settings_read() -> None:
    names = settings_env_names(SETTINGS.read_text())
    # the derivation itself sees the kinds of reads the module makes
    assert {"KEYGATE_PORT", "PORT", "ACCESS_PASSWORD", "KEYGATE_DRAIN_S"} <= names
    assert {"KEYGATE_<NAME>_API_KEYS", "<NAME>_API_KEYS", "KEYGATE_<NAME>_BASE_URL"} <= names
    rows = documented_rows(REFERENCE.read_text())
    missing = sorted((names | ALSO_DOCUMENTED) - rows)
    assert not missing, f"docs/configuration.md has no row for {missing}"


def test_the_reference_names_every_yaml_key_the_settings_read() -> None:
    keys = settings_yaml_keys(SETTINGS.read_text())
    assert {"default_provider", "models_ttl_s", "keys", "key_style", "rps", "base_url"} <= keys
    rows = documented_rows(REFERENCE.read_text())
    missing = sorted(keys - rows)
    assert not missing, f"docs/configuration.md has no row for {missing}"


def test_a_variable_read_without_a_doc_line_is_caught() -> None:
    """The derivation follows the code: a variable added to the settings is a missing row."""
    original = SETTINGS.read_text()
    source = original.replace(
        's.workers = _env_int(env, "KEYGATE_WORKERS"',
        's.extra = _env_int(env, "KEYGATE_SOMETHING_NEW", 1)\n    s.workers = _env_int(env, "KEYGATE_WORKERS"',
    )
    assert source != original, "the line this test extends has changed: pick another"
    assert "KEYGATE_SOMETHING_NEW" in settings_env_names(source)
    assert "KEYGATE_SOMETHING_NEW" not in documented_rows(REFERENCE.read_text())


def test_the_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link or anchor, a page left out of the nav or a hook
    that fails stops the build. The admin API page carries every route of the document."""
    pytest.importorskip("material", reason="mkdocs-material is installed by the test extras")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    admin = (site / "admin-api" / "index.html").read_text()
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        from admin_api import openapi_document
    finally:
        sys.path.pop(0)
    for path, methods in openapi_document()["paths"].items():
        for method in methods:
            assert f"{method.upper()} {path}" in admin, (method, path)
    for page in ("configuration", "deploy", "scale-out", "security", "benchmark"):
        assert (site / page / "index.html").is_file(), page


def heading_ids(markdown: str) -> set[str]:
    """The anchors MkDocs gives a page's headings (its toc slugs, or an explicit `{#id}`)."""
    from markdown.extensions.toc import slugify

    ids = set()
    for title in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M):
        explicit = re.search(r"\{#([\w-]+)\}\s*$", title)
        ids.add(explicit.group(1) if explicit else slugify(title.replace("`", ""), "-"))
    return ids


def test_the_readme_is_a_short_front_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(relative) >= 10, relative  # the front page leads into the site
    for link in relative:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve()
        assert target.is_file(), link
        if anchor:
            assert anchor in heading_ids(target.read_text()), link
    # every page of the site is reachable from the front page
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative}
    for page in (ROOT / "docs").glob("*.md"):
        assert page.resolve() in linked, page.name
