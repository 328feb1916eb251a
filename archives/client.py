"""HTTP client for a TorchServe started by :mod:`archives.server`: inference and management APIs,
with the ``Authorization: Bearer`` key read from the run folder's ``key_file.json``.

Keys expire (``token_expiration_min``); on an ``InvalidKeyException`` the client asks TorchServe
for a fresh key with the API key (``GET /token?type=...``) and retries once.
"""
from __future__ import annotations

import json
from typing import Any

import requests

from archives.server import ServerState


class TorchServeClient:
    def __init__(self, state: ServerState, timeout: float = 60.0):
        self.state = state
        self.timeout = timeout
        self.session = requests.Session()

    @classmethod
    def for_out(cls, out, **kw) -> "TorchServeClient":
        return cls(ServerState.load(out), **kw)

    # ---- plumbing -------------------------------------------------------------------------
    def auth_header(self, kind: str) -> dict[str, str]:
        if not self.state.token_auth:
            return {}
        return {"Authorization": f"Bearer {self.state.keys()[kind]}"}

    def _refresh(self, kind: str) -> None:
        api = self.state.keys()["API"]
        self.session.get(f"{self.state.management_url}/token", params={"type": kind},
                         headers={"Authorization": f"Bearer {api}"}, timeout=self.timeout)

    def request(self, kind: str, method: str, path: str, *, auth: bool = True,
                **kw: Any) -> requests.Response:
        base = self.state.url(kind)
        headers = dict(kw.pop("headers", None) or {})
        key_kind = "management" if kind == "management" else "inference"
        if auth:
            headers.update(self.auth_header(key_kind))
        kw.setdefault("timeout", self.timeout)
        r = self.session.request(method, base + path, headers=headers, **kw)
        if auth and self.state.token_auth and r.status_code in (400, 401) and \
                "InvalidKeyException" in r.text and "expired" in r.text.lower():
            self._refresh(key_kind)
            headers.update(self.auth_header(key_kind))
            r = self.session.request(method, base + path, headers=headers, **kw)
        return r

    # ---- inference API ---------------------------------------------------------------------
    def ping(self) -> requests.Response:
        return self.request("inference", "GET", "/ping")

    def predict(self, model: str, body: Any, version: str | int | None = None, *,
                content_type: str = "application/json", **kw) -> requests.Response:
        path = f"/predictions/{model}" + (f"/{version}" if version is not None else "")
        data = body if isinstance(body, (bytes, bytearray, str)) else json.dumps(body)
        return self.request("inference", "POST", path, data=data,
                            headers={"Content-Type": content_type}, **kw)

    def invocations(self, body: Any, model_name: str | None = None) -> requests.Response:
        data = body if isinstance(body, (bytes, bytearray, str)) else json.dumps(body)
        params = {"model_name": model_name} if model_name else None
        return self.request("inference", "POST", "/invocations", data=data, params=params,
                            headers={"Content-Type": "application/json"})

    # ---- management API --------------------------------------------------------------------
    def models(self) -> list[dict]:
        r = self.request("management", "GET", "/models")
        r.raise_for_status()
        return r.json()["models"]

    def describe(self, name: str, version: str | int = "all") -> list[dict]:
        r = self.request("management", "GET", f"/models/{name}/{version}")
        r.raise_for_status()
        return r.json()

    def versions(self, name: str) -> dict[str, dict]:
        """{version: description} of a registered model."""
        return {str(d["modelVersion"]): d for d in self.describe(name, "all")}

    def register(self, archive: str, model_name: str, *, initial_workers: int | None = None,
                 synchronous: bool = True, timeout: float = 300.0) -> requests.Response:
        """POST /models?url=<archive file in model_store>&model_name=... (needs enable_model_api)."""
        params: dict[str, Any] = {"url": archive, "model_name": model_name,
                                  "synchronous": str(synchronous).lower()}
        if initial_workers is not None:
            params["initial_workers"] = int(initial_workers)
        return self.request("management", "POST", "/models", params=params, timeout=timeout)

    def set_default(self, name: str, version: str | int) -> requests.Response:
        return self.request("management", "PUT", f"/models/{name}/{version}/set-default")

    def unregister(self, name: str, version: str | int) -> requests.Response:
        return self.request("management", "DELETE", f"/models/{name}/{version}")

    def scale(self, name: str, version: str | int | None, min_worker: int,
              max_worker: int | None = None, synchronous: bool = True) -> requests.Response:
        path = f"/models/{name}" + (f"/{version}" if version is not None else "")
        params = {"min_worker": min_worker, "max_worker": max_worker or min_worker,
                  "synchronous": str(synchronous).lower()}
        return self.request("management", "PUT", path, params=params, timeout=300)

    def default_version(self, name: str) -> str | None:
        """The version TorchServe routes /predictions/<name> to."""
        r = self.request("management", "GET", f"/models/{name}")
        if r.status_code != 200:
            return None
        return str(r.json()[0]["modelVersion"])

    # ---- metrics ---------------------------------------------------------------------------
    def metrics(self, names: list[str] | None = None) -> str:
        params = [("name[]", n) for n in names] if names else None
        r = self.request("metrics", "GET", "/metrics", auth=False, params=params)
        r.raise_for_status()
        return r.text


def curl_lines(state: ServerState, model: str, example: dict | None = None,
               version: str | None = None) -> list[str]:
    """Copy-paste curl commands for the inference and management APIs of ``state``."""
    body = json.dumps(example or {"user_id": "1", "k": 5})
    inf, mgt = "", ""
    if state.token_auth:
        kf = state.key_file
        inf = f"-H \"Authorization: Bearer $(jq -r .inference.key {kf})\" "
        mgt = f"-H \"Authorization: Bearer $(jq -r .management.key {kf})\" "
        try:
            keys = state.keys()
            inf = f"-H 'Authorization: Bearer {keys['inference']}' "
            mgt = f"-H 'Authorization: Bearer {keys['management']}' "
        except (OSError, ValueError, KeyError):
            pass
    v = f"/{version}" if version else ""
    return [
        f"curl -s {inf}{state.inference_url}/ping",
        f"curl -s {inf}-H 'Content-Type: application/json' -d '{body}' "
        f"{state.inference_url}/predictions/{model}{v}",
        f"curl -s {inf}-H 'Content-Type: application/json' -d '{body}' "
        f"{state.inference_url}/invocations",
        f"curl -s {mgt}{state.management_url}/models/{model}/all",
        f"curl -s {state.metrics_url}/metrics | grep '^Rec'",
    ]


__all__ = ["TorchServeClient", "curl_lines"]
