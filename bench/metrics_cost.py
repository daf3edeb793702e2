"""What the metrics cost: microseconds per request with and without them, and per scrape.

    python bench/metrics_cost.py [--requests 1000] [--rounds 20] [--path /v1/whoami]
                                 [--processes 16] [--project BAKED_PROJECT]

Bakes the template (or takes --project) and, in one child process per mode, builds the
service twice: as shipped, and with the metrics' request hooks taken out (the only
difference). Each is called as a WSGI application in a loop, in alternating rounds; the
figure is the best round of each. The hooks are also timed alone, inside one request
context: on a busy machine that figure is steadier than a difference of two. Modes:
prometheus_client in-process (the test client, ``flask run``) and multiprocess (gunicorn:
every counter a write to a memory-mapped file).
Then ``--processes`` short-lived processes each record a few hundred requests into one
multiprocess directory, as that many workers would (or dead workers left before a restart),
and a scrape of it is timed. In-process, no sockets, no TLS: a server adds the same to both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import baked  # the bench directory is not a package: run as a script, it is on sys.path

NO_LIMIT = "1000000000 per hour"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def environ(path: str, key: str) -> dict[str, Any]:
    """A request as one of gunicorn's worker processes receives it."""
    return baked.environ(path, {"Authorization": f"Bearer {key}"}, multiprocess=True)


def loop(app: WsgiApp, path: str, key: str, count: int) -> tuple[float, set[str]]:
    """Seconds per request, and the statuses seen."""
    statuses: set[str] = set()

    def start_response(status: str, _headers: list[tuple[str, str]], _exc: object = None) -> None:
        statuses.add(status)

    begin = time.perf_counter()
    for _ in range(count):
        body = app(environ(path, key), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - begin) / count, statuses


# --- In the child process: the bake's own package, imported after the mode is chosen ----------


def service(project: Path, work: Path, metrics_dir: str | None) -> tuple[Any, Any, str, str]:
    """The baked package, an app built from explicit settings, a reader key and a scraper key."""
    sys.path.insert(0, str(project / "src"))
    package = next(path.parent.parent.name for path in (project / "src").glob("*/keys/__init__.py"))
    root = __import__(package, fromlist=["create_app", "keys", "settings", "metrics"])
    reader = root.keys.mint(root.keys.KEY_PREFIX, key_id="reader", scopes=["items:read"], tenant="bench")
    scraper = root.keys.mint(root.keys.KEY_PREFIX, key_id="scraper", scopes=["metrics:read"], tenant="ops")
    env = {
        "APP_ENV": "test",
        "API_KEYS": f"{reader.entry},{scraper.entry}",
        "ITEMS_DB": str(work / "items.sqlite3"),
        "RATELIMIT_DEFAULT": NO_LIMIT,
        "RATELIMIT_AUTH_FAILURES": NO_LIMIT,
        "LOG_LEVEL": "WARNING",
    }
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    settings = root.settings.settings_from(env)
    return root, settings, reader.secret, scraper.secret


def metrics_hooks(app: Any, module: str) -> tuple[list[Any], list[Any]]:
    """The request hooks of ``module`` (functions and bound methods): before, after."""
    return (
        [hook for hook in app.before_request_funcs[None] if getattr(hook, "__module__", None) == module],
        [hook for hook in app.after_request_funcs[None] if getattr(hook, "__module__", None) == module],
    )


def without_metrics(app: Any, module: str) -> Any:
    """The same app minus the metrics' request hooks."""
    before, after = metrics_hooks(app, module)
    app.before_request_funcs[None] = [hook for hook in app.before_request_funcs[None] if hook not in before]
    app.after_request_funcs[None] = [hook for hook in app.after_request_funcs[None] if hook not in after]
    return app


def hooks_alone(app: Any, module: str, path: str, key: str, count: int) -> float:
    """Seconds per request spent in the metrics' hooks, called inside one real request context."""
    before, after = metrics_hooks(app, module)
    with app.test_request_context(path, headers={"Authorization": f"Bearer {key}"}):
        app.preprocess_request()  # identifies the caller, as a request would
        response = app.response_class("{}", mimetype="application/json")
        begin = time.perf_counter()
        for _ in range(count):
            for hook in before:
                hook()
            for hook in after:
                hook(response)
        return (time.perf_counter() - begin) / count


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root, settings, reader, _ = service(args.project, work, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    module = root.metrics.__name__
    apps = {"with": root.create_app(settings), "without": without_metrics(root.create_app(settings), module)}
    best = dict.fromkeys([*apps, "hooks"], float("inf"))
    for app in apps.values():
        loop(app, args.path, reader, args.requests // 10)  # warm-up
    # Many short rounds, alternating, each in the other order: a busy neighbour slows a round,
    # not one of the apps, and neither always runs first.
    for round_number in range(args.rounds):
        order = list(apps.items()) if round_number % 2 == 0 else list(apps.items())[::-1]
        for name, app in order:
            seconds, statuses = loop(app, args.path, reader, args.requests)
            if statuses != {"200 OK"}:
                raise SystemExit(f"{name} {args.path}: unexpected statuses {sorted(statuses)}")
            best[name] = min(best[name], seconds)
        alone = hooks_alone(apps["with"], module, args.path, reader, args.requests)
        best["hooks"] = min(best["hooks"], alone)
    return best


def fill(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Record requests as one worker would: a few routes, statuses and failures."""
    root, settings, reader, _ = service(args.project, work, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    app = root.create_app(settings)
    for path in ("/v1/whoami", "/v1/items", "/v1/items/missing", "/healthz", "/no-such-path"):
        loop(app, path, reader, 40)
        loop(app, path, "not-a-key", 20)
    return {}


def scrape(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root, settings, _, scraper = service(args.project, work, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    app = root.create_app(settings)
    seconds, statuses = loop(app, "/metrics", scraper, 50)
    if statuses != {"200 OK"}:
        raise SystemExit(f"/metrics: unexpected statuses {sorted(statuses)}")
    body = b"".join(app(environ("/metrics", scraper), lambda *_: None))
    files = len(list(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db")))
    return {"seconds": seconds, "bytes": len(body), "files": files}


CHILDREN = {"measure": measure, "fill": fill, "scrape": scrape}


# --- The parent: bake, start the children, print the figures ---------------------------------


def child(args: argparse.Namespace, task: str, metrics_dir: Path | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    command = [sys.executable, __file__, "--child", task, "--project", str(args.project)]
    command += ["--requests", str(args.requests), "--rounds", str(args.rounds), "--path", args.path]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{task} failed:\n{result.stdout}{result.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return answer


def report(args: argparse.Namespace, work: Path) -> None:
    print(f"GET {args.path}, in-process, best of {args.rounds} rounds of {args.requests} requests")
    print(f"{'prometheus_client mode':24} {'with':>9} {'without':>9} {'difference':>17} {'hooks alone':>12}")
    for mode in ("in-process", "multiprocess"):
        directory = None
        if mode == "multiprocess":
            directory = work / "measure"
            directory.mkdir()
        best = child(args, "measure", directory)
        cost = best["with"] - best["without"]
        print(
            f"{mode:24} {best['with'] * 1e6:6.1f} us {best['without'] * 1e6:6.1f} us "
            f"{cost * 1e6:6.1f} us ({cost / best['without']:+.1%}) {best['hooks'] * 1e6:9.1f} us "
            f"({best['hooks'] / best['without']:.1%} of a request)"
        )
    directory = work / "scrape"
    directory.mkdir()
    for _ in range(args.processes):
        child(args, "fill", directory)
    scraped = child(args, "scrape", directory)
    print(
        f"\nGET /metrics over {args.processes + 1} processes' files ({scraped['files']} files): "
        f"{scraped['seconds'] * 1e3:.2f} ms per scrape, {scraped['bytes']:,} bytes"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--path", default="/v1/whoami")
    parser.add_argument("--processes", type=int, default=16, help="processes whose files one scrape reads")
    parser.add_argument("--project", type=Path, help="measure this baked project instead of a fresh bake")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        work = Path(scratch)
        if args.child is not None:
            print(json.dumps(CHILDREN[args.child](args, work)))
            return 0
        args.project = (args.project or baked.bake(work / "bake")).resolve()
        report(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
