"""python -m archives.probe {torchserve-ready,alive,http}: the Helm chart's container probes.

Exec probes, run inside the container on loopback, so NetworkPolicy (which admits only the
gateway to TorchServe's inference port) never blocks them and they need no curl in the image.
Standard library only: a probe starts a fresh Python every period.

* ``torchserve-ready``  /ping answers ``Healthy`` **and** every listed version of the model has
                        all its workers ``READY`` (at least ``minWorkers``, at least one).
                        TorchServe's own /ping looks only at each model's *default* version,
                        and answers Healthy with no model at all: not enough for a pod that
                        must hold every version the experiment routes to (startup + readiness).
* ``alive``             the server answers HTTP at all, whatever the status, within the
                        timeout (liveness: TorchServe's frontend answers /ping from its own
                        threads, so busy or restarting workers do not make a pod "dead").
* ``http``              a 2xx answer (the gateway's /readyz and /healthz).

Exit 0 when the condition holds; else 1 with one line saying why (kubectl describe shows it).

The readiness rule (:func:`ping_healthy`, :func:`workers_ready`) is also what
``archives.server.wait_ready`` waits for after a local start: one rule, written here.
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.error
import urllib.request


class NotReady(Exception):
    """The condition does not hold; the message says why."""


def _get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET; any HTTP status is an answer. Raises NotReady when none came."""
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:  # loopback URLs
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise NotReady(f"{url}: no answer ({reason})") from None


def ping_healthy(inference_url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    """/ping answers 200 with status ``Healthy``; else NotReady."""
    status, body = _get(inference_url.rstrip("/") + "/ping", timeout, headers)
    try:
        health = json.loads(body).get("status")
    except (ValueError, AttributeError):
        health = None
    if status != 200 or health != "Healthy":
        raise NotReady(f"/ping answered {status} {health or body[:80]!r}")


def workers_ready(management_url: str, model: str, timeout: float, *, label: str | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, int]:
    """TorchServe's readiness rule for one model (``name``: its default version, or
    ``name/version``): at least ``minWorkers`` (and at least one) workers READY. Returns
    (ready, wanted); NotReady (naming ``label``) when it does not hold."""
    label = label or model
    url = f"{management_url.rstrip('/')}/models/{model}"
    status, body = _get(url, timeout, headers)
    if status == 404:
        raise NotReady(f"{label} is not registered")
    if status != 200:
        raise NotReady(f"{url} answered {status}: {body[:200]!r}")
    try:
        desc = json.loads(body)[0]
        workers = desc.get("workers") or []
        want = max(1, int(desc.get("minWorkers", 1)))
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        raise NotReady(f"{url}: unexpected answer {body[:200]!r}") from None
    ready = sum(1 for w in workers if w.get("status") == "READY")
    if ready < want:
        raise NotReady(f"{label}: {ready}/{want} workers READY")
    return ready, want


def torchserve_ready(inference_url: str, management_url: str, model: str,
                     versions: list[str], timeout: float) -> str:
    """A summary when /ping is Healthy and every version has all its workers READY."""
    ping_healthy(inference_url, timeout)
    parts = []
    for version in versions:
        ready, want = workers_ready(management_url, f"{model}/{version}", timeout,
                                    label=f"{model} v{version}")
        parts.append(f"v{version} {ready}/{want}")
    return "ready: " + ", ".join(parts)


def alive(url: str, timeout: float) -> str:
    status, _ = _get(url, timeout)
    return f"alive: {url} answered {status}"


def http_ok(url: str, timeout: float) -> str:
    status, body = _get(url, timeout)
    if not 200 <= status < 300:
        raise NotReady(f"{url} answered {status}: {body[:200]!r}")
    return f"ok: {url} answered {status}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m archives.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("torchserve-ready", help="/ping Healthy and every version's workers READY")
    r.add_argument("--inference-url", default="http://127.0.0.1:8080")
    r.add_argument("--management-url", default="http://127.0.0.1:8081")
    r.add_argument("--model", default="recsys")
    r.add_argument("--versions", nargs="+", required=True, help="every version the pod must hold")
    for name, hlp in (("alive", "any HTTP answer within the timeout"), ("http", "a 2xx answer")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--url", required=True)
    for s in sub.choices.values():
        s.add_argument("--timeout", type=float, default=3.0, help="seconds per request")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.cmd == "torchserve-ready":
            msg = torchserve_ready(a.inference_url, a.management_url, a.model, a.versions, a.timeout)
        elif a.cmd == "alive":
            msg = alive(a.url, a.timeout)
        else:
            msg = http_ok(a.url, a.timeout)
    except NotReady as e:
        print(f"not ready: {e}" if a.cmd != "alive" else f"not alive: {e}", file=sys.stderr)
        return 1
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
