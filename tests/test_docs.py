"""The documentation names what exists: its links and anchors resolve, every `pssl` command and option it
shows is one the CLI has, every `make` target is the Makefile's, and docs/data.md lists every folder and list
file the data checks expect."""

import re

import pytest

from conftest import REPO
from pssl.cli import build_parser
from pssl.data.downstream import DATASETS, layout

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page) -> set[str]:
    return {anchor(m) for m in re.findall(r"^#+ (.*)$", page.read_text(), re.M)}


def code(page) -> list[str]:
    """The lines of its code blocks and its inline code spans."""
    text = page.read_text()
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [line for block in blocks for line in block.splitlines()] + inline


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_and_anchors_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target}"
        if fragment:
            assert fragment in anchors(file), f"{page.name}: no heading #{fragment} in {file.name}"


def commands() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_pssl_commands_and_options_exist(page):
    known = commands()
    for line in code(page):
        for match in re.finditer(r"\bpssl ([a-z][a-z0-9-]*)((?:\s+(?!--\s)[^|;&>]*?)?)(?=\s--\s|[|;&>]|$)", line):
            command, rest = match.group(1), match.group(2)
            if command in ("pipeline",):  # prose such as "the pssl pipeline"
                continue
            assert command in known, f"{page.name}: `pssl {command}` is no command ({line.strip()})"
            for flag in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", rest):
                assert flag in known[command], f"{page.name}: pssl {command} has no {flag} ({line.strip()})"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_make_targets_exist(page):
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    for line in code(page):
        for target in re.findall(r"\bmake ([a-z][a-z0-9-]*)", line):
            assert target in targets, f"{page.name}: make {target} ({line.strip()})"


def test_data_page_lists_every_path_the_checks_expect():
    page = (REPO / "docs/data.md").read_text()
    for name, spec in DATASETS.items():
        for split in spec.splits:
            for path in layout(name, "<downstream_root>", split):
                assert str(path) in page, (name, split, path)
        assert f"({name})" in page, f"docs/data.md has no section for {name}"
        if spec.pool:
            assert f"<downstream_root>/{spec.pool}" in page, name


def rule_names() -> set[str]:
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *(REPO / "workflow/rules").glob("*.smk")])
    return set(re.findall(r"^\s*(?:rule|checkpoint) (\w+):", text, re.M)) | set(re.findall(r" as (\w+) with:", text))


def experiment_names() -> set[str]:
    import yaml
    return {name for f in ("config.yaml", "presets/paper.yaml", "presets/pilot.yaml")
            for name in (yaml.safe_load((REPO / f).read_text()).get("experiments") or {})}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_named_rules_and_targets_exist(page):
    """Rules the text names (`x` rule, rule `x`) and the targets of its snakemake commands (the words before
    the first option, or right after -n / -p) are rules or experiments."""
    rules, targets = rule_names(), rule_names() | experiment_names()
    text = page.read_text()
    for name in re.findall(r"(?:rule|rules) `(\w+)`|`(\w+)` rule", text):
        name = next(n for n in name if n)
        assert name in rules, f"{page.name}: no rule {name}"
    for line in code(page):
        for match in re.finditer(r"\bsnakemake((?:\s+(?:-n|-p|[a-z][a-z0-9_]*))+)(?=\s|$)", line):
            for word in match.group(1).split():
                if word not in ("-n", "-p"):
                    assert word in targets, f"{page.name}: snakemake target {word} is no rule or experiment"


REPO_PATH = re.compile(r"^(?:src|tests|workflow|presets|profiles|scripts|benchmarks|docs|envs)/[\w./-]+$")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_named_repository_files_exist(page):
    for token in code(page):
        for word in token.split():
            word = word.strip("`'\"(),:;")
            if REPO_PATH.match(word) and "*" not in word and "<" not in word:
                assert (REPO / word).exists(), f"{page.name}: no file {word}"


def schema_has(schema: dict, path: list[str]) -> bool:
    node = schema
    for part in path:
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]  # a name of the user's (a dataset, a variant)
        else:
            return False
    return True


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_named_config_keys_exist(page):
    """`section.key` spans whose first part is a top-level config key name a key of the schema (with every
    stage setting's entry generated)."""
    from pssl.config import config_schema
    schema = config_schema(REPO / "workflow/schemas/config.schema.yaml")
    top = set(schema["properties"])
    for token in code(page):
        for word in re.findall(r"^[a-z_0-9]+(?:\.[a-z_0-9<>*-]+)+(?=[:=]|$)", token.strip()):
            parts = word.split(".")
            if parts[0] in top and not any(p.endswith((".py", ".md", ".yaml", ".csv", ".pt")) for p in [word]):
                assert schema_has(schema, parts), f"{page.name}: no config key {word}"
