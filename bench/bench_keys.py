"""Key verification cost with 1 and with 5,000 configured keys, and by where a key differs.

    python bench/bench_keys.py [--project BAKED_PROJECT]

Verifies with the bake's own ``keys`` module. Prints CPU microseconds per verification (best
of several interleaved runs, so that a noisy machine affects every case alike) and the ratios that
matter: 5,000 keys vs 1 key, and the spread across keys that differ from a configured key at
different positions.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import baked  # the bench directory is not a package: run as a script, it is on sys.path

NUMBER = 20_000
REPEAT = 7


def ring_with(keys: ModuleType, count: int) -> tuple[Any, list[str]]:
    minted = [keys.mint(keys.KEY_PREFIX, key_id=f"k{i}", scopes=["items:read"]) for i in range(count)]
    return keys.KeyRing(keys.KEY_PREFIX, [m.key for m in minted]), [m.secret for m in minted]


def attempt(keys: ModuleType, ring: Any, presented: str) -> Callable[[], None]:
    def verify() -> None:
        with contextlib.suppress(keys.InvalidKey):
            ring.verify(presented)

    return verify


def best_microseconds(cases: dict[str, Callable[[], None]]) -> dict[str, float]:
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(REPEAT):
        for name, call in cases.items():  # interleaved: load on the machine hits every case
            best[name] = min(
                best[name], timeit.timeit(call, timer=time.process_time, number=NUMBER) / NUMBER * 1e6
            )
    return best


def cases(keys: ModuleType) -> dict[str, Callable[[], None]]:
    one, one_secrets = ring_with(keys, 1)
    many, many_secrets = ring_with(keys, 5_000)
    stranger = keys.mint(keys.KEY_PREFIX, key_id="x", scopes=["a:b"]).secret
    # Well formed (valid checksum) and equal to a configured key in its first 40 characters:
    # if the lookup compared keys character by character, this one would be slower.
    near = many_secrets[7][:40] + stranger[40 : -keys.CHECKSUM_LENGTH]
    near += keys.checksum(near)
    typo = many_secrets[0][:10] + ("a" if many_secrets[0][10] != "a" else "b") + many_secrets[0][11:]
    return {
        "valid, 1 key": attempt(keys, one, one_secrets[0]),
        "valid, 5,000 keys (first)": attempt(keys, many, many_secrets[0]),
        "valid, 5,000 keys (last)": attempt(keys, many, many_secrets[-1]),
        "unknown, 1 key": attempt(keys, one, stranger),
        "unknown, 5,000 keys": attempt(keys, many, stranger),
        "unknown, 5,000 keys, first 40 chars of a real key": attempt(keys, many, near),
        "mistyped (one character), 5,000 keys": attempt(keys, many, typo),
    }


def report(results: dict[str, float]) -> None:
    width = max(map(len, results))
    for name, micros in results.items():
        print(f"{name:<{width}}  {micros:6.2f} us")
    print()
    print(f"5,000 keys / 1 key, valid:   {results['valid, 5,000 keys (last)'] / results['valid, 1 key']:.2f}")
    print(f"5,000 keys / 1 key, unknown: {results['unknown, 5,000 keys'] / results['unknown, 1 key']:.2f}")
    first, last = results["valid, 5,000 keys (first)"], results["valid, 5,000 keys (last)"]
    print(f"last / first configured key: {last / first:.2f}")
    near_ratio = results["unknown, 5,000 keys, first 40 chars of a real key"] / results["unknown, 5,000 keys"]
    print(f"40 shared chars / none:      {near_ratio:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    baked.add_project_option(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        keys = baked.module(baked.project_or_bake(args.project, Path(work)), "keys")
        report(best_microseconds(cases(keys)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
