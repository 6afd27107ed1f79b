"""Helpers for the docs tests: run `cellmono docs` in a child process, read labels out of mermaid text."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# `cellmono` with the docs commands plugged in even before the command table lists them.
CELLMONO = ("import sys; from cellmono.cli import main as cli; "
            "cli.PLUGGED_COMMANDS.setdefault('docs', ('cellmono.cli.docs:register', 'the offline docs site')); "
            "sys.exit(cli.main(sys.argv[1:]))")


def cellmono(*argv: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`cellmono ARGV...` in a child process, as a user would run it."""
    return subprocess.run([sys.executable, "-c", CELLMONO, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def expected_labels(diagram: str) -> list[str]:
    """The visible text fragments of a mermaid diagram: node, edge, participant and message labels."""
    labels: list[str] = []
    kind = diagram.split()[0] if diagram.split() else ""
    labels += re.findall(r'"([^"\n]+)"', diagram)  # quoted labels: a["text"], -->|"text"|
    labels += re.findall(r"[->ox.=]\|([^|\"\n]+)\|", diagram)  # unquoted edge labels: -->|text|
    labels += re.findall(r"[\w-]\[([^\[\]\"(){}\n]+)\]", diagram)  # a[text]
    labels += re.findall(r"[\w-]\{([^{}\"\n]+)\}", diagram)  # a{text}
    labels += re.findall(r"[\w-]\(\[?([^()\[\]\"\n]+)\]?\)", diagram)  # a(text), a([text])
    if kind == "sequenceDiagram":
        labels += re.findall(r"^\s*\S+?\s*-[->x)]+\s*\S+?\s*:\s*(.+)$", diagram, re.MULTILINE)  # A->>B: text
    fragments = []
    for label in labels:
        for fragment in re.split(r"<[^>]+>", label):  # <br/>, <b>: markup, not text
            fragment = " ".join(fragment.split())
            if re.search(r"[A-Za-z]", fragment):
                fragments.append(fragment)
    return fragments


def svg_text(svg: str) -> str:
    """The text a reader sees in an SVG drawing, whitespace collapsed."""
    svg = re.sub(r"<style.*?</style>", " ", svg, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", svg)).split())
