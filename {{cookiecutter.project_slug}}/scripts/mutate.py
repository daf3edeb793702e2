"""Mutation testing of the service, so a check that no test can fail does not pass for a
tested one.

mutmut breaks the modules that ``[tool.mutmut]`` in pyproject.toml names, one small edit at a
time, and runs the fast tests that reach each broken function. A mutant that no test kills
fails this run, unless mutation-equivalents.toml lists it with the reason it changes nothing.
Entries name the module, the function and the line before and after the edit, never a line
number or mutmut's index, so they keep matching while unrelated code around them changes.

    python scripts/mutate.py                  # every module it mutates (make mutate)
    python scripts/mutate.py keys proxy       # only these modules
    python scripts/mutate.py --sample 3       # mutants whose number ends in 0, 1 or 2: about 30%
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = "{{ cookiecutter.package_name }}"
EQUIVALENTS = PROJECT / "mutation-equivalents.toml"


def _core() -> tuple[str, ...]:
    """The modules that [tool.mutmut] in pyproject.toml mutates, named as mutmut names them in the
    package: "src/*/auth.py" is "auth", "src/*/keys/*.py" is "keys" (its __init__), "keys.cli"...
    Paths are matched as mutmut matches them: only_mutate, less do_not_mutate, with fnmatch."""
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    package = PROJECT / "src" / PACKAGE
    names = set()
    for path in package.rglob("*.py"):
        relative = path.relative_to(PROJECT).as_posix()
        if any(fnmatch.fnmatch(relative, pattern) for pattern in config["only_mutate"]) and not any(
            fnmatch.fnmatch(relative, pattern) for pattern in config.get("do_not_mutate", [])
        ):
            names.add(".".join(path.relative_to(package).with_suffix("").parts))
    return tuple(sorted(name.removesuffix(".__init__") for name in names))


CORE = _core()
WORK = PROJECT / "mutants"
# pytest makes its directories there private to the user (0700) and named per run.
IN_MEMORY = Path("/dev/shm")  # noqa: S108 - a tmpfs, for the tests' temporary files only
# mutmut's verdicts (`mutmut results`) that leave a mutant alive: no test failed, or none ran it.
ALIVE = frozenset({"survived", "no tests"})
KILLED = frozenset({"killed", "timeout"})
# Verdicts that say the run itself went wrong: a crash, a stop, a mutant never tried.
BROKEN = frozenset({"suspicious", "segfault", "check was interrupted by user", "not checked"})
# mutmut names a mutant <module>.x_<function>__mutmut_<n>, or <module>.xǁ<Class>ǁ<method>__mutmut_<n>.
MUTANT_NAME = re.compile(
    r"(?P<module>[\w.]+)\.x(?:_(?P<function>\w+?)|ǁ(?P<cls>\w+)ǁ(?P<method>\w+?))__mutmut_\d+"
)


@dataclass(frozen=True)
class Mutant:
    name: str
    module: str  # without the package: "keys", "settings"
    function: str  # "mint", "KeyRing.verify"
    before: str  # the original line(s), as the source has them (stripped)
    after: str  # the mutated line(s)

    def matches(self, entry: dict[str, str]) -> bool:
        return (
            entry.get("module") == self.module
            and entry.get("function") == self.function
            and _same(entry.get("before", ""), self.before)
            and _same(entry.get("after", ""), self.after)
        )

    def stub(self) -> str:
        """An entry to paste into mutation-equivalents.toml, once the reason is true."""
        return "\n".join(
            [
                "[[equivalent]]",
                f"module = {json.dumps(self.module)}",
                f"function = {json.dumps(self.function)}",
                f"before = {_toml_literal(self.before)}",
                f"after = {_toml_literal(self.after)}",
                'reason = "..."',
            ]
        )


def _same(listed: str, found: str) -> bool:
    # Whitespace is formatting: a reformatted line is the same line.
    return " ".join(listed.split()) == " ".join(found.split())


def _toml_literal(text: str) -> str:
    return f"'{text}'" if "'" not in text and "\n" not in text else json.dumps(text)


def mutmut(*args: str, capture: bool = True) -> str:
    """Run mutmut's command line in the project; its output, or "" when it went to the terminal."""
    command = [sys.executable, "-m", "mutmut", *args]
    # The fast suite needs no installed pytest plugin; those an environment brings (xdist,
    # hypothesis...) would cost their set-up again in each of the thousand runs.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if IN_MEMORY.is_dir():
        # Each run's temporary files (an SQLite database per app) in memory: on disk, their
        # writes are a good part of the time of each of those runs.
        env["TMPDIR"] = str(IN_MEMORY)
    result = subprocess.run(command, cwd=PROJECT, env=env, capture_output=capture, text=True, check=False)  # noqa: S603 - this interpreter's mutmut
    output = (result.stdout or "") + (result.stderr or "")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:]) or "(its output is above)"
        raise SystemExit(f"mutmut {' '.join(args)} failed ({result.returncode}):\n{tail}")
    return output


def verdicts() -> dict[str, str]:
    """Every mutant with mutmut's verdict on it ("killed", "survived", "not checked"...)."""
    found = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, sep, verdict = line.strip().rpartition(": ")
        if sep and MUTANT_NAME.fullmatch(name):
            found[name] = verdict
    return found


def describe(name: str) -> Mutant:
    """The mutant's module, function and edit, from ``mutmut show``."""
    match = MUTANT_NAME.fullmatch(name)
    if match is None:
        raise SystemExit(f"unexpected mutant name from mutmut: {name}")
    function = match["function"] or f"{match['cls']}.{match['method']}"
    removed, added = [], []
    for line in mutmut("show", name).splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
    return Mutant(name, _module(name), function, "\n".join(removed), "\n".join(added))


def _module(name: str) -> str:
    match = MUTANT_NAME.fullmatch(name)
    if match is None:
        return ""
    # mutmut names the package's own __init__ after the package.
    return "__init__" if match["module"] == PACKAGE else match["module"].removeprefix(f"{PACKAGE}.")


def accepted_equivalents() -> list[dict[str, str]]:
    text = EQUIVALENTS.read_text(encoding="utf-8")
    entries: list[dict[str, str]] = tomllib.loads(text).get("equivalent", [])
    for entry in entries:
        missing = sorted({"module", "function", "before", "after", "reason"} - entry.keys())
        if missing or not entry["reason"].strip():
            raise SystemExit(
                f"{EQUIVALENTS.name}: an entry lacks {', '.join(missing) or 'a reason'}: {entry}"
            )
    return entries


def scores(found: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Per module, and for all of them (""): mutants killed (a timeout is a kill), and tried."""
    counts: dict[str, tuple[int, int]] = {}
    for name, verdict in found.items():
        if verdict == "skipped":  # `# pragma: no mutate`: never tried
            continue
        for module in (_module(name), ""):
            killed, tried = counts.get(module, (0, 0))
            counts[module] = (killed + (verdict in KILLED), tried + 1)
    return counts


def _explained(mutant: Mutant, entries: list[dict[str, str]]) -> bool:
    return any(mutant.matches(entry) for entry in entries)


def report(survivors: list[Mutant], entries: list[dict[str, str]]) -> int:
    """Print each survivor; the number that no entry explains."""
    unexplained = 0
    for mutant in survivors:
        entry = next((entry for entry in entries if mutant.matches(entry)), None)
        label = "accepted" if entry is not None else "SURVIVED"
        print(f"\n{label} {mutant.module}.{mutant.function}  ({mutant.name})")
        for line in mutant.before.splitlines():
            print(f"    - {line}")
        for line in mutant.after.splitlines():
            print(f"    + {line}")
        if entry is not None:
            print(f"    why: {entry['reason'].strip()}")
            continue
        unexplained += 1
        print(f"    tests that ran it: python -m mutmut tests-for-mutant {mutant.name}")
        print(f"    kill it with a test, or, if it changes nothing, add to {EQUIVALENTS.name}:")
        print("        " + mutant.stub().replace("\n", "\n        "))
    return unexplained


def within(module: str, modules: list[str] | set[str]) -> bool:
    """Whether ``module`` is one of ``modules``, or in a package among them ("keys.cli" in "keys")."""
    return any(module == name or module.startswith(f"{name}.") for name in modules)


def stale(survivors: list[Mutant], entries: list[dict[str, str]], modules: set[str]) -> list[dict[str, str]]:
    """Entries for the modules just tested that matched no survivor: their mutant is gone or dies."""
    return [
        entry
        for entry in entries
        if within(entry["module"], modules) and not any(mutant.matches(entry) for mutant in survivors)
    ]


def patterns_for(modules: list[str], sample: int | None) -> list[str]:
    """mutmut's name patterns for these modules (none: every module), and for a sample spread
    over every function: the mutants whose number ends in one of the first ``sample`` digits,
    the same ones each time until their function changes."""
    if sample is None and not modules:
        return []
    last_digit = "" if sample is None else f"__mutmut_*[0-{sample - 1}]"
    # The package's own __init__ has no module name of its own: its mutants are "<package>.x_...".
    return [
        f"{PACKAGE}.x*{last_digit}" if module == "__init__" else f"{PACKAGE}.{module}.*{last_digit}"
        for module in sorted(modules or CORE)
    ]


def run(patterns: list[str], max_children: int) -> dict[str, str]:
    """The verdict on each mutant that this run tried."""
    # A fresh copy every time: mutmut keeps verdicts across runs, and a verdict from before a
    # test changed would be a verdict about other tests.
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    # Its progress goes to the terminal: a whole run takes minutes.
    mutmut("run", "--max-children", str(max_children), *patterns, capture=False)
    # `mutmut results` also lists the mutants this run left out, never tried.
    return {
        name: verdict
        for name, verdict in verdicts().items()
        if any(fnmatch.fnmatch(name, pattern) for pattern in patterns or [f"{PACKAGE}.*"])
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help=f"some of: {' '.join(CORE)} (default: all)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="parallel mutants")
    parser.add_argument("--sample", type=int, choices=range(1, 10), help="tenths of the mutants to try")
    args = parser.parse_args(argv)
    unknown = sorted(module for module in args.modules if not any(within(core, [module]) for core in CORE))
    if unknown:
        parser.error(f"not in the core: {', '.join(unknown)}")
    entries = accepted_equivalents()

    started = time.monotonic()
    found = run(patterns_for(args.modules, args.sample), args.max_children)
    broken = {name: verdict for name, verdict in found.items() if verdict in BROKEN}
    survivors = [describe(name) for name, verdict in sorted(found.items()) if verdict in ALIVE]
    elapsed = time.monotonic() - started

    unexplained = report(survivors, entries)
    # A sample cannot tell whether an entry's mutant is gone or only left out.
    for entry in [] if args.sample else stale(survivors, entries, set(args.modules or CORE)):
        where = f"{entry['module']}.{entry['function']}"
        print(f"\nno longer needed in {EQUIVALENTS.name}: {where}: {entry['after']}")
    for name, verdict in sorted(broken.items()):
        print(f"\nBROKEN {name}: {verdict} (mutmut's output above says why)")

    accepted = Counter(
        module for mutant in survivors if _explained(mutant, entries) for module in (mutant.module, "")
    )
    print()
    for module, (killed, tried) in sorted(scores(found).items()):
        label = f"  {module}" if module else "mutation score"
        if not module and args.sample is not None:
            label += f" (a sample: {args.sample}0% of the mutants)"
        share = 100 * killed / max(tried, 1)
        print(f"{label}: {killed}/{tried} killed ({share:.1f}%), {accepted[module]} accepted as equivalent")
    print(f"{unexplained} unexplained, in {elapsed:.0f} s")
    return 1 if unexplained or broken or not found else 0


if __name__ == "__main__":
    sys.exit(main())
