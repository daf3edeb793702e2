"""Microseconds per request in one process, without a server: where the service's time goes.

    python bench/inprocess.py [--requests 20000] [--rounds 3] [--path /v1/whoami ...]
                              [--hooks service] [--profile service] [--project BAKED_PROJECT]

Bakes the template (or takes ``--project``), builds the four apps of run.py with memory://
storage, and calls each as a WSGI application in a loop (no sockets, no gunicorn, no test
client), in alternating rounds, under gevent's monkey-patching as gunicorn's gevent worker
runs them. Times are CPU time of this process, so other work on a shared machine does not
count. Prints the best round of each app and its throughput as a share of bare Flask's.
``--hooks NAME`` times each of that app's request hooks and views; ``--profile NAME`` adds a
cProfile listing of that app's loop, sorted by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import importlib
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import baked  # the bench directory is not a package: run as a script, it is on sys.path
import run
from gevent import monkey

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def loop(app: WsgiApp, path: str, key: str, count: int) -> float:
    """CPU seconds of this process per request (other processes on a shared machine do not
    count), status checked on each."""
    statuses: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]], _exc: object = None) -> None:
        statuses.append(status)

    begin = time.process_time()
    for _ in range(count):
        body = app(baked.environ(path, {"X-Api-Key": key}), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    elapsed = time.process_time() - begin
    if set(statuses) != {"200 OK"}:
        raise run.BenchError(f"unexpected statuses {sorted(set(statuses))}")
    return elapsed / count


def hook_times(app: Any, path: str, key: str, count: int) -> tuple[float, dict[str, float]]:
    """Seconds per request, and per request hook and view (wrapped in timers), for one app."""
    spent: dict[str, float] = {}

    def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        # wraps keeps the view's name: Flask-Limiter finds a view's limits by its name.
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            begin = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - begin

        return call

    for kind, hooks in (
        ("before", app.before_request_funcs),
        ("after", app.after_request_funcs),
        ("teardown", app.teardown_request_funcs),
    ):
        for scope, functions in hooks.items():
            hooks[scope] = [timed(f"{kind} {name_of(f)}", f) for f in functions]
    for endpoint, view in list(app.view_functions.items()):
        app.view_functions[endpoint] = timed(f"view {endpoint}", view)
    loop(app, path, key, count // 10)  # warm-up
    spent.clear()
    total = loop(app, path, key, count)
    return total, {label: seconds / count for label, seconds in spent.items()}


def name_of(function: Callable[..., Any]) -> str:
    inner = getattr(function, "func", function)  # functools.partial
    return str(getattr(inner, "__qualname__", repr(inner)))


def build_apps(project: Path, work: Path) -> tuple[dict[str, WsgiApp], str]:
    """The four apps, built as gunicorn builds them: the master configures logging (the
    service's gunicorn.conf.py does, so its handlers and their locks exist before the fork),
    then each gevent worker patches the standard library and loads its app."""
    db = work / "items.sqlite3"
    key, entries, raw = run.prepare(project, db)
    keys = baked.module(project, "keys")
    baked.module(project, "logging").configure(key_prefix=keys.KEY_PREFIX, json_lines=True, level="INFO")
    monkey.patch_all()
    os.environ.update(
        BENCH_PACKAGE=baked.package_of(project),
        BENCH_TENANT=run.TENANT,
        ITEMS_DB=str(db),
        SEED_API_KEYS=",".join(raw),
        MINIMAL_API_KEYS=",".join(raw),
        RATELIMIT_DEFAULT=run.NO_LIMIT,
    )
    bare = importlib.import_module("bare_app").app
    minimal = importlib.import_module("minimal_app").app
    seed = importlib.import_module("seed_app").app
    settings = baked.module(project, "settings")
    env = {"APP_ENV": "test", "API_KEYS": entries, "ITEMS_DB": str(db), "RATELIMIT_DEFAULT": run.NO_LIMIT}
    service = baked.module(project, "app").create_app(settings.settings_from(env))
    return {"bare": bare, "minimal": minimal, "seed": seed, "service": service}, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per app, path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", action="append", help=f"repeatable (default: {' '.join(run.PATHS)})")
    parser.add_argument(
        "--profile", choices=["bare", "minimal", "seed", "service"], help="profile it (first path)"
    )
    parser.add_argument("--hooks", choices=["minimal", "seed", "service"], help="time its hooks (first path)")
    baked.add_project_option(parser)
    args = parser.parse_args(argv)
    paths = args.path or list(run.PATHS)
    real_stderr = sys.stderr
    with tempfile.TemporaryDirectory(prefix="bench-") as work, open(os.devnull, "w") as sink:
        sys.stderr = sink  # the apps' log lines: formatted and written, but not shown.
        try:
            apps, key = build_apps(baked.project_or_bake(args.project, Path(work)), Path(work))
            timings: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for path in paths:
                    for name, app in apps.items():
                        timings.setdefault((name, path), []).append(loop(app, path, key, args.requests))
            if args.profile:
                profiler = cProfile.Profile()
                profiler.runcall(loop, apps[args.profile], paths[0], key, args.requests)
            if args.hooks:
                total, hooks = hook_times(apps[args.hooks], paths[0], key, args.requests)
        finally:
            sys.stderr = real_stderr
    for (name, path), values in timings.items():
        best, bare = min(values), min(timings[("bare", path)])
        minimal = min(timings[("minimal", path)])
        print(
            f"{name:8} {path:11} {best * 1e6:7.1f} us/request  "
            f"({bare / best:.2f} of bare, {minimal / best:.2f} of minimal)"
        )
    if args.profile:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(45)
    if args.hooks:
        print(f"\n{args.hooks} {paths[0]}: {total * 1e6:.1f} us/request with timers; per hook:")
        for label, seconds in sorted(hooks.items(), key=lambda item: -item[1]):
            print(f"  {seconds * 1e6:7.1f} us  {label}")
        print(f"  {(total - sum(hooks.values())) * 1e6:7.1f} us  Flask, Werkzeug and middleware around them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
