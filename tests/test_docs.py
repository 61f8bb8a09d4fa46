"""The README's command examples work as written: Snakemake reads every word after `--configfile FILE`
as another config file, so a target placed there would be read as a config file."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]


def snakemake_commands(text: str) -> list[str]:
    """`snakemake …` commands in fenced code blocks and in inline code spans (a span may wrap over lines)."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    block_lines = [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("snakemake ")]
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose) if s.strip().startswith("snakemake ")]
    return block_lines + spans


def test_there_are_commands_to_check():
    assert sum(len(snakemake_commands(p.read_text())) for p in DOCS) >= 3


def test_no_target_follows_configfile():
    bad = []
    for path in DOCS:
        for cmd in snakemake_commands(path.read_text()):
            words = cmd.split("#", 1)[0].split()
            if "--configfile" not in words:
                continue
            after = words[words.index("--configfile") + 1 :]
            # after the config file(s), only options may follow: anything else is read as a config file
            files = [w for w in after if not w.startswith("-")]
            if len(files) > 1 and not all(f.endswith((".yaml", ".yml", ".json")) for f in files):
                bad.append(f"{path.name}: {cmd}")
    assert not bad, "targets after --configfile (put them first):\n" + "\n".join(bad)


def test_readme_shows_a_target_before_configfile():
    """A user copying a one-stage command gets the order that works."""
    cmds = snakemake_commands((REPO / "README.md").read_text())
    with_target = [c for c in cmds if "--configfile" in c and re.search(r"snakemake results/\S+ .*--configfile", c)]
    assert with_target, "the README should show a target placed before --configfile"
