"""The generated README and docs/ stay true to the bake they describe.

Each database choice names only its own variables and commands; the table of contents and every
relative link lead somewhere; and the README's first hour works, command by command, on a fresh
bake of each choice.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

from .conftest import TEMPLATE
from .served import free_port

DATABASES = ("sqlite", "postgresql")
FIRST_HOUR_MAX_LINES = 130

# What only one database choice has: the other's README and docs must not name it.
ONLY_IN = {
    "sqlite": [r"\bITEMS_DB", r"\.sqlite3\b", r"SQLite file"],
    "postgresql": [
        r"\bDATABASE_[A-Z_]+",
        r"\bmake db\b",
        r"\bdb-stop\b",
        r"\bDB_PORT\b",
        r"\bpsycopg",
        r"local_postgres",
        r"REQUIRE_POSTGRES",
        r"postgresql://",
        r"\bdocker compose\b",
        r"row-level security",
    ],
}

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
KEY_PRINTED = re.compile(r"^key \(shown once[^\n]*\n +(\S+)$", re.M)
ENTRY_PRINTED = re.compile(r"^entry \([^\n]*\n +(\S+)$", re.M)


@pytest.fixture(scope="module", params=DATABASES)
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp(request.param)
    context = {"database": request.param}
    return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output), extra_context=context))


def database_of(project: Path) -> str:
    return "postgresql" if (project / "scripts" / "local_postgres.py").is_file() else "sqlite"


def documents(project: Path) -> list[Path]:
    return [project / "README.md", *sorted((project / "docs").glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", title).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = anchor(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path, project: Path) -> list[str]:
    broken = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # another site: not this project's to keep
            file, _, fragment = target.partition("#")
            destination = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(project)}:{number}: {target}"
            if not destination.exists():
                broken.append(f"{where}: no such file")
            elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
                broken.append(f"{where}: no such heading")
    return broken


def section(text: str, title: str) -> list[str]:
    """The lines of a `## title` section, heading included, up to the next `## ` heading."""
    lines = text.splitlines()
    start = lines.index(f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def test_each_database_choice_documents_only_its_own_variables_and_commands(project: Path) -> None:
    database = database_of(project)
    other = next(choice for choice in DATABASES if choice != database)
    found = [
        f"{path.relative_to(project)}:{number}: {match.group(0)}"
        for path in documents(project)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for pattern in ONLY_IN[other]
        for match in [re.search(pattern, line)]
        if match
    ]
    assert found == [], f"a {database} bake documents what only {other} has:\n" + "\n".join(found)
    own = "\n".join(path.read_text(encoding="utf-8") for path in documents(project))
    assert all(re.search(pattern, own) for pattern in ONLY_IN[database][:2]), "its own are documented"


def test_the_readme_opens_with_a_table_of_contents_that_leads_to_its_headings(project: Path) -> None:
    readme = project / "README.md"
    headings = [line for _, line in prose_lines(readme.read_text(encoding="utf-8")) if HEADING.match(line)]
    assert headings[0].startswith("# ") and headings[1] == "## Contents", headings[:2]
    contents = section(readme.read_text(encoding="utf-8"), "Contents")
    listed = {target[1:] for line in contents for target in LINK.findall(line) if target.startswith("#")}
    sections = {anchor(line[3:]) for line in headings if line.startswith("## ")} - {"contents"}
    assert sections <= listed, f"sections missing from the contents: {sections - listed}"
    assert listed <= anchors(readme), f"contents leading nowhere: {listed - anchors(readme)}"


def test_the_first_hour_comes_first_and_is_short(project: Path) -> None:
    text = (project / "README.md").read_text(encoding="utf-8")
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert titles[:2] == ["## Contents", "## First hour"], titles
    first_hour = section(text, "First hour")
    assert len(first_hour) <= FIRST_HOUR_MAX_LINES, f"the first hour is {len(first_hour)} lines"
    steps = [line[4:] for line in first_hour if line.startswith("### ")]
    for step in ("Install", "Mint a key", "Add a resource", "Deploy", "Rotate a key", "Revoke a key"):
        assert step in steps, f"the first hour has no step {step!r}: {steps}"


def test_every_relative_link_in_the_documents_leads_to_a_file_and_heading(project: Path) -> None:
    """docs/production.md is linked from the README and written beside it, so this test also
    proves that the production recipe exists."""
    broken = [problem for path in documents(project) for problem in broken_links(path, project)]
    assert broken == [], "\n".join(broken)


def test_the_make_targets_the_readme_lists_are_every_target_of_the_makefile(project: Path) -> None:
    makefile = (project / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):.*## ", makefile, re.M)) - {"help"}
    listed = " ".join(section((project / "README.md").read_text(encoding="utf-8"), "Commands"))
    named = set(re.findall(r"`([a-z][a-z-]*)`", listed))
    assert targets - named == set(), f"make targets the README does not list: {targets - named}"
    assert "mutate" in named


# The first hour, run as a reader would. ----------------------------------------------------------


def first_hour_commands(readme: str) -> list[str]:
    """The shell commands of the first hour's ```sh blocks, in order, continuation lines joined."""
    text = "\n".join(section(readme, "First hour"))
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#\s.*$", "", command).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def wait_for_tls(port: int, log: Path, deadline: float = 90) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    stop_at = time.monotonic() + deadline
    while time.monotonic() < stop_at:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                context.wrap_socket(sock, server_hostname="localhost").close()
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"make run did not listen on {port}:\n{log.read_text(errors='replace')[-4000:]}")


class Reader:
    """Runs the first hour's commands one by one in a bake, as its reader would in a shell."""

    def __init__(self, project: Path, port: int) -> None:
        self.project, self.port = project, port
        tools = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{tools}:{os.environ['PATH']}",
            "PYTHONPATH": str(project / "src"),
            "BIND": f"127.0.0.1:{port}",
            "REQUIRE_POSTGRES": "1",
        }
        self.env.pop("APP_ENV", None)
        self.key = self.entry = ""
        self.reloaded = float("-inf")
        self.outputs: list[tuple[str, str]] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.log = project / ".dev" / "make-run.log"

    def run(self, command: str) -> None:
        if command.startswith(("python -m venv", ". .venv/bin/activate", "make install")):
            return  # the template's interpreter already has every dependency: see the test
        command = command.replace("<the entry printed above>", self.entry)
        command = command.replace("localhost:8443", f"localhost:{self.port}")
        if re.fullmatch(r"make db\b.*", command):
            command += f" DB_PORT={free_port()}"
        if re.fullmatch(r"KEY='<the key printed above>'", command):
            self.env["KEY"] = self.key
        elif "make run" in command:
            self.serve(command)
        else:
            self.execute(command)

    def serve(self, command: str) -> None:
        self.log.parent.mkdir(exist_ok=True)
        with self.log.open("wb") as log:
            self.server = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.project,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_tls(self.port, self.log)

    def execute(self, command: str) -> None:
        result = self.shell(command)
        # A HUP starts new workers: a reader who calls at once may still meet an old one, and
        # calls again. Twenty seconds is slack for a loaded machine, not a promise of the service.
        retry_until = self.reloaded + 20
        while command.startswith("curl ") and '"status":401' in result.stdout.replace(" ", ""):
            if time.monotonic() > retry_until:
                break
            time.sleep(0.5)
            result = self.shell(command)
        if command.startswith("kill -HUP"):
            self.reloaded = time.monotonic()
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{command!r} failed:\n{output[-4000:]}"
        self.outputs.append((command, result.stdout))
        key, entry = KEY_PRINTED.search(result.stdout), ENTRY_PRINTED.search(result.stdout)
        if key and entry:
            self.key, self.entry = key.group(1), entry.group(1)

    def shell(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def call(self, path: str, key: str) -> tuple[int, str]:
        result = subprocess.run(
            [
                *("curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert", ".dev/localhost.pem"),
                *("-H", f"Authorization: Bearer {key}", f"https://localhost:{self.port}{path}"),
            ],
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        body, _, status = result.stdout.rpartition("\n")
        return int(status or 0), body

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()


def curl_answers(outputs: list[tuple[str, str]]) -> list[dict[str, object]]:
    return [json.loads(output) for command, output in outputs if command.startswith("curl ")]


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")
@pytest.mark.parametrize("database", DATABASES)
def test_the_first_hour_works_command_by_command_on_a_fresh_bake(database: str, tmp_path: Path) -> None:
    """Every command of the README's first hour, in order, in a fresh bake, as printed, but for
    what a machine cannot do as a reader does:

    - the virtualenv is this interpreter's (it already holds every locked dependency), so
      `python -m venv`, activating it and `make install` are skipped; the bake's `src/` is on
      PYTHONPATH in place of the editable install;
    - `make run` runs in the background, on a free port (BIND), and curl calls that port;
    - `make db` gets a free DB_PORT, as the README says to do when 5432 is taken;
    - `<the key printed above>` and `<the entry printed above>` are what the last command that
      printed a key printed, as the reader copies them;
    - a call that meets a 401 within 20 s of a `HUP` is made again, as a reader would, while the
      new workers start.

    Besides each command's exit status, the answers must be the ones the README promises: the
    minted key is `laptop`, the rotated one `laptop~2`, the item is created and listed, and the
    revoked key is refused."""
    project = Path(
        cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(tmp_path), extra_context={"database": database}
        )
    )
    reader = Reader(project, free_port())
    try:
        for command in first_hour_commands((project / "README.md").read_text(encoding="utf-8")):
            reader.run(command)
        first_key = next(
            key
            for command, output in reader.outputs
            if "keys new " in command
            for key in KEY_PRINTED.findall(output)
        )
        answers = curl_answers(reader.outputs)
        assert [answer.get("key_id") for answer in answers if "scopes" in answer] == ["laptop", "laptop~2"]
        created = next(answer for answer in answers if answer.get("name") == "sprocket")
        listed = next(answer for answer in answers if "items" in answer)
        assert created["id"] in [item["id"] for item in listed["items"]]  # type: ignore[index,union-attr]
        status = 0
        for _ in range(20):  # revocation reaches every worker within 2 s; 10 s of slack
            status, _ = reader.call("/v1/whoami", first_key)
            if status == 401:
                break
            time.sleep(0.5)
        assert status == 401, f"the revoked key still answers {status}"
        assert reader.call("/v1/whoami", reader.key)[0] == 200, "the successor works on"
    finally:
        reader.stop()
        if database == "postgresql":
            subprocess.run(["make", "db-stop"], cwd=project, env=reader.env, capture_output=True, check=False)
            cluster = runpy.run_path(str(project / "scripts" / "local_postgres.py"))["cluster_directory"]
            shutil.rmtree(cluster(project), ignore_errors=True)
