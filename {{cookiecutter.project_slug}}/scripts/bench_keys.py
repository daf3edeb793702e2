"""Key verification cost with 1 and with 5,000 configured keys, and by where a key differs.

Prints microseconds per verification (best of several interleaved runs, so that a noisy
machine affects both sides alike) and the ratios that matter: 5,000 keys vs 1 key, and the
spread across keys that differ from a configured key at different positions.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import contextlib

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, InvalidKey, KeyRing, mint

NUMBER = 20_000
REPEAT = 7


def ring_with(count: int) -> tuple[KeyRing, list[str]]:
    minted = [mint(KEY_PREFIX, key_id=f"k{i}", scopes=["items:read"]) for i in range(count)]
    return KeyRing(KEY_PREFIX, [m.key for m in minted]), [m.secret for m in minted]


def attempt(ring: KeyRing, presented: str) -> Callable[[], None]:
    def verify() -> None:
        with contextlib.suppress(InvalidKey):
            ring.verify(presented)

    return verify


def best_microseconds(cases: dict[str, Callable[[], None]]) -> dict[str, float]:
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(REPEAT):
        for name, call in cases.items():  # interleaved: load on the machine hits every case
            best[name] = min(best[name], timeit.timeit(call, number=NUMBER) / NUMBER * 1e6)
    return best


def main() -> None:
    one, one_secrets = ring_with(1)
    many, many_secrets = ring_with(5_000)
    stranger = mint(KEY_PREFIX, key_id="x", scopes=["a:b"]).secret
    # Well formed (valid checksum) and equal to a configured key in its first 40 characters:
    # if the lookup compared keys character by character, this one would be slower.
    near = many_secrets[7][:40] + stranger[40 : -keys.CHECKSUM_LENGTH]
    near += keys._checksum(near)
    typo = many_secrets[0][:10] + ("a" if many_secrets[0][10] != "a" else "b") + many_secrets[0][11:]
    cases = {
        "valid, 1 key": attempt(one, one_secrets[0]),
        "valid, 5,000 keys (first)": attempt(many, many_secrets[0]),
        "valid, 5,000 keys (last)": attempt(many, many_secrets[-1]),
        "unknown, 1 key": attempt(one, stranger),
        "unknown, 5,000 keys": attempt(many, stranger),
        "unknown, 5,000 keys, first 40 chars of a real key": attempt(many, near),
        "mistyped (one character), 5,000 keys": attempt(many, typo),
    }
    results = best_microseconds(cases)
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


if __name__ == "__main__":
    main()
