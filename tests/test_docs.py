"""The README stays true to the code: every setting, command and test file it names exists, and every
setting and command that exists is documented."""

from __future__ import annotations

import re

from rag.settings import Settings, repo_root

ROOT = repo_root()
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented_and_every_documented_setting_exists():
    fields = {f"RAG_{name.upper()}" for name in Settings.model_fields}
    documented = set(re.findall(r"`(RAG_[A-Z0-9_]+)`", README))
    assert not fields - documented, f"settings missing from the README: {sorted(fields - documented)}"
    assert not documented - fields, f"the README names settings that do not exist: {sorted(documented - fields)}"


def test_every_command_is_documented():
    from rag.apps.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in sub.choices:
        assert f"`rag {command}" in README, f"`rag {command}` is not in the README's command table"


def test_files_the_readme_names_exist():
    for path in set(re.findall(r"`((?:tests|rag|prompts|docs|eval)/[\w./-]+\.(?:py|md|json|png|jsonl))`", README)):
        assert (ROOT / path).exists(), f"the README names {path}, which does not exist"
    for image in re.findall(r"\]\((docs/[\w.-]+\.png)\)|src=\"(docs/[\w.-]+\.png)\"", README):
        path = image[0] or image[1]
        assert (ROOT / path).is_file(), path


def test_benchmark_parts_in_the_readme_exist():
    from rag.eval import bench

    listed = re.search(r"rag bench \[--parts ([\w,-]+)\]", README).group(1).split(",")
    known = set(bench.PARTS)
    assert set(listed) <= known, set(listed) - known
