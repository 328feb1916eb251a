"""TorchServe's ``config.properties``: the committed bases (archives/config/) and the run copy
rendered from one with this instance's ports, host, metrics config and model store.

Values of keys we do not replace are copied verbatim (Java escapes included), so a base file
reads the same to TorchServe before and after rendering.
"""
from __future__ import annotations

import re
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"
CONFIGS = {"dev": CONFIG_DIR / "dev.properties", "prod": CONFIG_DIR / "prod.properties"}
ADDRESS_KEYS = {"inference": "inference_address", "management": "management_address",
                "metrics": "metrics_address"}


def read_properties(path: Path) -> list[tuple[str, str] | str]:
    """Lines of a Java properties file: (key, raw value) pairs, other lines kept verbatim."""
    out: list[tuple[str, str] | str] = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith(("#", "!")) and "=" in s:
            k, v = s.split("=", 1)
            out.append((k.strip(), v.strip()))
        else:
            out.append(line)
    return out


def properties_dict(path: Path) -> dict[str, str]:
    return {x[0]: x[1] for x in read_properties(path) if isinstance(x, tuple)}


def address_host(value: str) -> str:
    """The host of an ``*_address`` value (``http://HOST:PORT``); 127.0.0.1 when unreadable."""
    m = re.match(r"^https?://(\[[^\]]+\]|[^:/]+)", value)
    return m.group(1) if m else "127.0.0.1"


def render_config(base: Path, dest: Path, *, ports: dict[str, int], host: str | None,
                  metrics_yaml: Path, store: Path, extra: dict[str, str] | None = None) -> dict:
    """Write ``dest`` from ``base`` with ports/host/metrics_config/model_store replaced (values
    of other keys are copied verbatim, escapes included). Returns the effective key/values."""
    lines = read_properties(base)
    props = {x[0]: x[1] for x in lines if isinstance(x, tuple)}
    repl: dict[str, str] = {}
    for kind, key in ADDRESS_KEYS.items():
        h = host or address_host(props.get(key, "http://127.0.0.1"))
        repl[key] = f"http://{h}:{ports[kind]}"
    repl["metrics_config"] = str(metrics_yaml)
    repl["model_store"] = str(store)
    repl.update(extra or {})
    text, seen = [], set()
    for x in lines:
        if isinstance(x, tuple) and x[0] in repl:
            text.append(f"{x[0]}={repl[x[0]]}")
            seen.add(x[0])
        else:
            text.append(x if isinstance(x, str) else f"{x[0]}={x[1]}")
    for k, v in repl.items():
        if k not in seen:
            text.append(f"{k}={v}")
    dest.write_text("\n".join(text) + "\n")
    return {**props, **repl}


__all__ = ["CONFIG_DIR", "CONFIGS", "ADDRESS_KEYS", "read_properties", "properties_dict",
           "address_host", "render_config"]
