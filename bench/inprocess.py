"""Microseconds per request in one process, without a server: where the service's time goes.

    python bench/inprocess.py [--requests 20000] [--path /v1/whoami] [--hooks service]
                              [--profile service] [--project BAKED_PROJECT]

Bakes the template, builds the three apps of run.py with memory:// storage, and calls each
as a WSGI application in a loop (no sockets, no gunicorn, no test client). ``--profile NAME``
adds a cProfile listing of that app's loop, sorted by cumulative time; ``--hooks NAME`` times
each of that app's request hooks and views.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # the bench directory is not a package

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def environ(path: str, key: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_X_API_KEY": key,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def loop(app: WsgiApp, path: str, key: str, count: int) -> float:
    """Seconds per request, status checked on each."""
    statuses: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]], _exc: object = None) -> None:
        statuses.append(status)

    begin = time.perf_counter()
    for _ in range(count):
        body = app(environ(path, key), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    elapsed = time.perf_counter() - begin
    if set(statuses) != {"200 OK"}:
        raise run.BenchError(f"unexpected statuses {sorted(set(statuses))}")
    return elapsed / count


def hook_times(app: Any, path: str, key: str, count: int) -> tuple[float, dict[str, float]]:
    """Seconds per request, and per request hook and view (wrapped in timers), for one app."""
    spent: dict[str, float] = {}

    def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - begin

        return run

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


def build_apps(work: Path, project: Path | None) -> tuple[dict[str, WsgiApp], str]:
    project = project.resolve() if project else run.bake(work / "bake")
    package = run.package_of(project)
    db = work / "items.sqlite3"
    key, entries, raw = run.prepare(project, package, db)
    os.environ.update(
        BENCH_PACKAGE=package,
        BENCH_TENANT=run.TENANT,
        ITEMS_DB=str(db),
        SEED_API_KEYS=",".join(raw),
        RATELIMIT_DEFAULT=run.NO_LIMIT,
    )
    bare = importlib.import_module("bare_app").app
    seed = importlib.import_module("seed_app").app
    app_module = importlib.import_module(f"{package}.app")
    settings = importlib.import_module(f"{package}.settings")
    env = {"APP_ENV": "test", "API_KEYS": entries, "ITEMS_DB": str(db), "RATELIMIT_DEFAULT": run.NO_LIMIT}
    service = app_module.create_app(settings.settings_from(env))
    return {"bare": bare, "seed": seed, "service": service}, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", default="/v1/whoami")
    parser.add_argument("--profile", choices=["bare", "seed", "service"])
    parser.add_argument("--hooks", choices=["seed", "service"], help="time each request hook of this app")
    parser.add_argument("--project", type=Path, help="measure this baked project instead of a fresh bake")
    args = parser.parse_args(argv)
    real_stderr = sys.stderr
    with tempfile.TemporaryDirectory(prefix="bench-") as work, open(os.devnull, "w") as sink:
        sys.stderr = sink  # the apps' log lines: formatted and written, but not shown.
        try:
            apps, key = build_apps(Path(work), args.project)
            timings: dict[str, list[float]] = {name: [] for name in apps}
            for _ in range(args.rounds):
                for name, app in apps.items():
                    timings[name].append(loop(app, args.path, key, args.requests))
            if args.profile:
                profiler = cProfile.Profile()
                profiler.runcall(loop, apps[args.profile], args.path, key, args.requests)
            if args.hooks:
                total, hooks = hook_times(apps[args.hooks], args.path, key, args.requests)
        finally:
            sys.stderr = real_stderr
    bare = min(timings["bare"])
    for name, values in timings.items():
        best = min(values)
        print(f"{name:8} {args.path:11} {best * 1e6:7.1f} us/request  ({bare / best:.2f} of bare)")
    if args.profile:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(45)
    if args.hooks:
        print(f"\n{args.hooks} {args.path}: {total * 1e6:.1f} us/request with timers; per hook:")
        for label, seconds in sorted(hooks.items(), key=lambda item: -item[1]):
            print(f"  {seconds * 1e6:7.1f} us  {label}")
        print(f"  {(total - sum(hooks.values())) * 1e6:7.1f} us  Flask, Werkzeug and middleware around them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
