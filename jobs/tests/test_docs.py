"""The docs against the code: the environment table, links between pages, queue names.

Pure reads of files in the repository: these tests need no service (`unit`).
"""

import re
from pathlib import Path

from jobs import topology

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
SETTINGS = ROOT / "project" / "settings.py"

# env("NAME"), env.str("NAME", ...), env.db("NAME"), os.environ["NAME"], os.environ.get("NAME"),
# os.getenv("NAME"), and "JOBS_NAME": env.float in the table of the platform's: the ways a
# settings module reads a variable.
_ENV_READ = re.compile(
    r"""(?:\benv(?:\.\w+)?\(|os\.environ(?:\.get\(|\[)|os\.getenv\()\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|["'](JOBS_[A-Z0-9_]*)["']:\s*(?:env\.|lambda )"""
)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def settings_variables() -> set[str]:
    return {a or b for a, b in _ENV_READ.findall(SETTINGS.read_text())}


def table_rows(page: Path, heading: str) -> list[list[str]]:
    """The rows of the first table under `## heading`, as lists of cells."""
    text = page.read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def documented(heading: str) -> dict[str, list[str]]:
    rows = {}
    for cells in table_rows(CONFIGURATION, heading):
        name = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        assert name, f"{CONFIGURATION.name}, table {heading!r}: the first cell {cells[0]!r} is not one `NAME`"
        rows[name.group(1)] = cells
    return rows


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    slugs = set()
    for heading in re.findall(r"^#{1,6} (.+)$", page.read_text(), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def test_the_configuration_table_lists_exactly_the_variables_settings_reads():
    read = settings_variables()
    table = set(documented("Read by project/settings.py"))
    assert read, "no env reads found in project/settings.py: has the way it reads them changed?"
    missing = sorted(read - table)
    stale = sorted(table - read)
    assert not missing, (
        f"project/settings.py reads {', '.join(missing)}, which docs/configuration.md does not list: "
        "add a row (name, default, meaning) to its table 'Read by project/settings.py'."
    )
    assert not stale, (
        f"docs/configuration.md lists {', '.join(stale)} under 'Read by project/settings.py', "
        "but settings no longer reads them: drop the rows, or move them to the scripts' table."
    )


def test_each_script_variable_is_read_where_the_table_says():
    for name, cells in documented("Read by the scripts and docker compose").items():
        readers = re.findall(r"`([^`]+)`", cells[2])
        assert readers, f"docs/configuration.md: {name} names no file under 'read by'"
        for reader in readers:
            path = ROOT / reader
            assert path.is_file(), (
                f"docs/configuration.md: {name} is said to be read by {reader}, which is no file"
            )
            assert name in path.read_text(), f"docs/configuration.md: {reader} does not mention {name}"


def test_links_between_the_readme_and_the_docs_resolve():
    broken = []
    for page in markdown_pages():
        for target in _LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no file {path})")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_results_files_named_in_the_docs_exist():
    missing = []
    for page in markdown_pages():
        for name in re.findall(r"bench/results/([\w.-]+\.(?:json|md))", page.read_text()):
            if not (ROOT / "bench" / "results" / name).exists():
                missing.append(f"{page.relative_to(ROOT)}: bench/results/{name}")
    assert not missing, "results files named but absent (renamed?):\n" + "\n".join(missing)


def test_the_docs_name_only_queues_of_the_topology():
    for page in markdown_pages():
        named = {q for match in re.findall(r"-Q ([\w.,]+)", page.read_text()) for q in match.split(",")}
        assert named <= set(topology.WORKLOAD_QUEUES), (
            f"{page.relative_to(ROOT)} runs workers on {sorted(named - set(topology.WORKLOAD_QUEUES))}, "
            "which are no workload queues of jobs.topology"
        )
