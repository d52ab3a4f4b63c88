"""The code blocks of README.md and docs/*.md run as pasted, against the simulator, so a snippet cannot rot.

The convention (docs/development.md, "The docs' code blocks run"):

* Every ```python block runs, complete as pasted, unless the line just before its fence is
  ``<!-- not run: <reason> -->``. A block that defines a DAG must parse into a ``DagBag`` without import
  errors, and each of its DAGs runs once with ``dag.test()``: with the arguments of the file's
  ``airflow dags test <dag_id> [<logical date>] [-c '<conf>']`` line for it, if any.
  ``<!-- parse only: <reason> -->`` keeps the parse and skips the run.
* All blocks run in one child process (fresh namespace each, ``__name__ == "__snippet__"``; startup and the
  metadata DB paid once), with a temporary ``AIRFLOW_HOME`` and ``AIRFLOW_CONN_DIALNEXA_DEFAULT`` set from the
  banner of a simulator started with the README's own ``dialnexa-simulator ...`` command. Its calls end at
  once here, and so do calls the blocks place, so waits take one poll.
* Shell blocks are not run as a whole, but their ``dialnexa-simulator`` commands are, and must print what
  the ```text block after them shows; ``export AIRFLOW_CONN_...`` lines must define usable connections;
  ``airflow dags test`` lines must name a DAG of their file or of ``dags/``.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import child_env

from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNER = Path(__file__).with_name("_snippet_runner.py")
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*(not run|parse only):\s*(\S.*?)\s*-->\s*$")
DAG_ID = re.compile(r"""(?:dag_id\s*=\s*|\bDAG\(\s*)["']([\w.-]+)["']""")
DEFINES_DAG = re.compile(r"\bDAG\(|@dag\b")
URL_LINE = "DIALNEXA_SIMULATOR_URL="
DOCS_PORT = "127.0.0.1:8089"


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # "not run" / "parse only"

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the marker comment on the line just before each."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = MARKER.match(lines[i - 1]) if i else None
        found.append(Block(path, i + 1, opening.group(1), "\n".join(lines[i + 1 : end]) + "\n", before and before[1]))
        i = end + 1
    return found


def shell_commands(block: Block) -> Iterator[list[str]]:
    """Each command of a shell block as argv (continuations joined, comments dropped)."""
    for line in block.code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            yield words


def dag_ids(path: Path) -> set[str]:
    return {m[1] for b in blocks(path) if b.lang == "python" for m in DAG_ID.finditer(b.code)}


ALL_BLOCKS = [block for path in DOCS for block in blocks(path)]
SHELL = [b for b in ALL_BLOCKS if b.lang in ("bash", "sh", "shell", "console")]


# -- the convention itself -------------------------------------------------------------------------------------


def test_markers_sit_right_before_a_python_fence_and_give_a_reason() -> None:
    problems = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith(("<!-- not run", "<!-- parse only")):
                fence = lines[number] if number < len(lines) else ""
                if not MARKER.match(line) or fence.strip() != "```python":
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()!r} before {fence!r}")
    assert problems == []


def test_the_docs_have_blocks_to_run() -> None:
    runnable = [b for b in ALL_BLOCKS if b.lang == "python" and b.marker != "not run"]
    assert len([b for b in runnable if b.path.name == "README.md"]) >= 4
    assert any(DEFINES_DAG.search(b.code) for b in runnable)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def test_relative_links_point_at_files_and_headings_that_exist() -> None:
    broken = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = {slug(line) for line in linked.read_text().splitlines() if line.startswith("#")}
                if anchor not in headings:
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


# -- shell blocks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", SHELL, ids=[b.where for b in SHELL])
def test_shell_blocks_name_real_connections_and_dags(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dags = {m[1] for path in (ROOT / "dags").glob("*.py") for m in DAG_ID.finditer(path.read_text())}
    for argv in shell_commands(block):
        if argv[0] == "export" and argv[1].startswith("AIRFLOW_CONN_"):
            name, value = argv[1].split("=", 1)
            conn_id = name.removeprefix("AIRFLOW_CONN_").lower()
            monkeypatch.setenv(name, value)
            DialNexaHook(conn_id).settings  # noqa: B018 - Airflow's own lookup, then the provider's checks
        if argv[:3] == ["airflow", "dags", "test"]:
            assert argv[3] in dag_ids(block.path) | repo_dags, f"{block.where}: no DAG {argv[3]!r}"


# -- the simulator: its commands print what the docs show -------------------------------------------------


class Sim:
    """A simulator started with a docs command (on a free port), with its banner and control API."""

    def __init__(self, argv: list[str]) -> None:
        command = [sys.executable, "-m", "airflow_provider_dialnexa.simulator", *argv[1:], "--port", "0"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.banner: list[str] = []
        while not self.banner or not self.banner[-1].startswith("Stop with Ctrl-C"):
            line = self.proc.stdout.readline()
            assert line, f"{argv} exited: {self.proc.wait(30)}"
            self.banner.append(line.rstrip("\n"))
        self.url = self.banner[0].removeprefix(URL_LINE)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def shown(self) -> list[str]:
        """The banner as the docs show it: on the default port."""
        port = self.url.removeprefix("http://")
        return [line.replace(port, DOCS_PORT) for line in self.banner]

    def connection(self) -> str:
        line = next(line for line in self.banner if line.startswith("export AIRFLOW_CONN_DIALNEXA_DEFAULT="))
        return shlex.split(line)[1].split("=", 1)[1]

    def end_calls_at_once(self) -> None:
        """The calls it created end now with their planned outcome; calls placed from now on end at once."""
        created = next((line for line in self.banner if line.startswith("Created ")), "")
        for call_id, outcome in re.findall(r"(call_\w+) \((\w+)\)", created):
            self.client.post(f"/_sim/calls/{call_id}/status", json={"status": outcome}).raise_for_status()
        zero = [0, 0]
        self.client.post("/_sim/config", json={"queued_s": zero, "ring_s": zero, "talk_s": zero}).raise_for_status()

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.communicate(timeout=30)


def simulator_commands() -> list[tuple[Block, list[str], Block | None]]:
    """Each ``dialnexa-simulator`` command of the docs, with the ```text block right after its block."""
    found = []
    for path in DOCS:
        file_blocks = blocks(path)
        for index, block in enumerate(file_blocks):
            for argv in shell_commands(block) if block in SHELL else ():
                if argv[0] == "dialnexa-simulator":
                    after = file_blocks[index + 1] if index + 1 < len(file_blocks) else None
                    found.append((block, argv, after if after is not None and after.lang == "text" else None))
    return found


SIM_COMMANDS = simulator_commands()


@pytest.mark.parametrize(("block", "argv", "output"), SIM_COMMANDS, ids=[c[0].where for c in SIM_COMMANDS])
def test_simulator_commands_print_what_the_docs_show(block: Block, argv: list[str], output: Block | None) -> None:
    sim = Sim(argv)
    try:
        if output is not None:
            assert sim.shown() == output.code.splitlines(), f"{output.where}: update it to what {argv} prints"
        assert sim.client.get("/_sim/health").status_code == 200
    finally:
        sim.stop()


# -- python blocks: run them all ----------------------------------------------------------------------------


def dags_test_runs(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``airflow dags test`` lines of a file, by DAG id: ``{"logical_date", "conf"}`` for ``dag.test()``."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for block in blocks(path):
        if block.lang not in ("bash", "sh", "shell", "console"):
            continue
        for argv in shell_commands(block):
            if argv[:3] != ["airflow", "dags", "test"]:
                continue
            rest = argv[4:]
            run: dict[str, Any] = {"logical_date": None, "conf": None}
            while rest:
                word = rest.pop(0)
                if word in ("-c", "--conf"):
                    run["conf"] = json.loads(rest.pop(0))
                elif not word.startswith("-"):
                    run["logical_date"] = word
            runs.setdefault(argv[3], []).append(run)
    return runs


def plan(home: Path) -> list[dict[str, Any]]:
    """The runner's plan: every python block not marked ``not run``, as a file, in document order."""
    dags = home / "dags"
    scripts = home / "scripts"
    scripts.mkdir()
    steps = []
    for path in DOCS:
        runs = dags_test_runs(path)
        for block in blocks(path):
            if block.lang != "python" or block.marker == "not run":
                continue
            name = f"{path.stem.lower().replace('-', '_')}_{block.line}.py"
            step: dict[str, Any] = {"id": block.where, "kind": "script", "runs": []}
            if DEFINES_DAG.search(block.code):
                step["kind"] = "dag"
                if block.marker != "parse only":
                    ids = [m[1] for m in DAG_ID.finditer(block.code)]
                    step["runs"] = [run for dag_id in ids for run in runs.get(dag_id, [{}])]
                target = dags / name
            else:
                target = scripts / name
            target.write_text(block.code)
            step["path"] = str(target)
            steps.append(step)
    return steps


def readme_simulator() -> list[str]:
    return next(argv for block, argv, _ in SIM_COMMANDS if block.path.name == "README.md")


def test_python_blocks_run_as_pasted_against_the_simulator(tmp_path: Path) -> None:
    home = tmp_path / "airflow_home"
    (home / "dags").mkdir(parents=True)
    steps = plan(home)
    (home / "plan.json").write_text(json.dumps(steps))
    sim = Sim(readme_simulator())
    try:
        sim.end_calls_at_once()
        env = child_env(home)
        env.update(
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
            AIRFLOW_CONN_DIALNEXA_DEFAULT=sim.connection(),
        )
        child = subprocess.run(
            [sys.executable, str(RUNNER), str(home / "plan.json")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        sim.stop()
    output = child.stdout + child.stderr
    lines = [line for line in child.stdout.splitlines() if line.startswith("SNIPPET_RESULTS ")]
    assert lines, f"the runner did not finish (exit {child.returncode}):\n{output[-8000:]}"
    results = json.loads(lines[-1].removeprefix("SNIPPET_RESULTS "))
    assert set(results) == {step["id"] for step in steps}
    failed = {where: problem for where, problem in results.items() if problem}
    assert failed == {}, f"blocks that fail as pasted: {json.dumps(failed, indent=1)}\n{output[-12000:]}"
