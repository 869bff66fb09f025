"""Every stylesheet the package ships parses cleanly with a real CSS parser.

A browser silently drops (or, with CSS nesting, re-scopes) every rule after an unclosed `{`, so a
single missing brace breaks the look of everything below it without any error on the page.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tinycss2

ROOT = Path(__file__).resolve().parents[1]
STYLESHEETS = sorted((ROOT / "src").rglob("*.css"))


def css_problems(source: str) -> list[str]:
    """Every parse error in `source`, each as "line:column message"; [] when it is clean."""
    problems: list[str] = []

    def error(node: object, message: str) -> None:
        problems.append(f"{node.source_line}:{node.source_column} {message}")  # type: ignore[attr-defined]

    def rules(nodes: list, nested: bool) -> None:
        for node in nodes:
            if node.type == "error":
                error(node, node.message)
            elif node.type == "qualified-rule":
                if nested:  # this stylesheet does not use CSS nesting: a rule in a rule is a lost }
                    error(node, f"rule {tinycss2.serialize(node.prelude).strip()!r} inside a rule")
                declarations(node.content)
            elif node.type == "at-rule" and node.content is not None:
                if node.at_keyword.lower() in ("media", "supports", "container", "layer"):
                    rules(tinycss2.parse_rule_list(node.content, True, True), nested=False)
                else:  # @font-face, @page, @keyframes' blocks hold declarations or rules
                    inner = tinycss2.parse_blocks_contents(node.content, True, True)
                    for item in inner:
                        if item.type == "error":
                            error(item, item.message)
                        elif item.type == "qualified-rule":
                            declarations(item.content)

    def declarations(content: list) -> None:
        for item in tinycss2.parse_blocks_contents(content, True, True):
            if item.type == "error":
                error(item, item.message)
            elif item.type in ("qualified-rule", "at-rule"):
                rules([item], nested=True)

    rules(tinycss2.parse_stylesheet(source, True, True), nested=False)
    # a block still open at the end of the file is closed silently by the parser; serializing
    # writes the `}` it lacked, so the two texts' counts of `}` differ by the blocks left open
    unclosed = tinycss2.serialize(tinycss2.parse_component_value_list(source)).count(
        "}"
    ) - source.count("}")
    if unclosed:
        problems.append(f"end of file: {unclosed} block(s) never closed with }}")
    return problems


def test_the_package_ships_stylesheets() -> None:
    assert any(p.name == "app.css" for p in STYLESHEETS)


@pytest.mark.parametrize("path", STYLESHEETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_stylesheet_parses_without_errors(path: Path) -> None:
    assert css_problems(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        ".a {\n  color: red;\n.b {\n  color: blue;\n}\n",  # an unclosed block, then a rule
        ".a {\n  color: red;\n",  # open at the end of the file
        ".a {\n  color red;\n}\n",  # a declaration without its colon
        "@media (max-width: 600px) {\n  .a {\n    color: red;\n  .b { color: blue; }\n}\n",
    ],
)
def test_the_check_finds_what_a_browser_would_drop(source: str) -> None:
    assert css_problems(source)


def test_the_check_passes_plain_css() -> None:
    source = (
        '@charset "utf-8";\n@font-face { font-family: x; src: url("a}.woff"); }\n'
        ".a { content: '}'; color: red; }\n"
        "@media (max-width: 600px) { .a { color: blue; } }\n"
        "@keyframes spin { from { transform: rotate(0); } to { transform: rotate(1turn); } }\n"
    )
    assert css_problems(source) == []
