"""The README's two set-up commands exist, and CI runs the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- setup -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README needs a ```bash block right after <!-- setup -->"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_has_two_setup_commands():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "toolbox run" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_relative_links_in_readme_and_docs_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_result_page_names_every_field_of_the_schema():
    import json

    schema = json.loads((ROOT / "toolbox" / "schema" / "result.schema.json").read_text())
    page = (ROOT / "docs" / "result-schema.md").read_text()
    assert [key for key in schema["properties"] if f"`{key}`" not in page] == []


def test_readme_fits_on_about_two_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 100, "details belong in docs/"


def test_readme_results_are_numbers_of_the_generated_pages():
    readme = (ROOT / "README.md").read_text()
    assert "COLD_RUN" not in readme
    results = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    generated = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "results").glob("*.md"))
    numbers = set(re.findall(r"\d+\.\d+", results))
    assert len(numbers) >= 10
    assert not {n for n in numbers if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", generated)}
    zoo = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "results").glob("zoo*.md"))  # every zoo page
    counts = re.findall(r"(\d+) of (\d+)", results)
    assert len(counts) >= 6

    def given(n: int, m: int) -> bool:  # a rate "(n/m)", or a confusion line: n found of m, or n of m clean called
        return (
            f"({n}/{m})" in zoo
            or re.search(rf"TP {n} · FP \d+ · TN \d+ · FN {m - n} ", zoo) is not None
            or re.search(rf"FP {n} · TN {m - n} ", zoo) is not None
        )

    assert not [c for c in counts if not given(int(c[0]), int(c[1]))], "an 'N of M' the zoo page does not give"
