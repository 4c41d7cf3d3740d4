"""`switchboard up`'s record of what it started (<data_dir>/state.json), read by `down`, `status`
and the client commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from switchboard.settings import Settings

STATE_FILE = "state.json"


def state_path(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser() / STATE_FILE


def read_state(settings: Settings) -> dict | None:
    try:
        return json.loads(state_path(settings).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        print(f"switchboard: ignoring unreadable {state_path(settings)}", file=sys.stderr)
        return None


def write_state(settings: Settings, state: dict) -> None:
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    temporary.chmod(0o600)
    temporary.replace(path)  # atomic: `down` never reads half a file


def clear_state(settings: Settings) -> None:
    state_path(settings).unlink(missing_ok=True)


def settings_from_state(settings: Settings, state: dict | None) -> Settings:
    """The settings `up` ran with, for what decides names and addresses: `down` must remove the
    actors `up` created even if this shell's environment differs."""
    if not state:
        return settings
    return settings.replace(
        host=state.get("host", settings.host),
        port=int(state.get("port", settings.port)),
        namespace=state.get("namespace", settings.namespace),
        regions=tuple(state.get("regions", settings.regions)),
        shards_per_region=int(state.get("shards_per_region", settings.shards_per_region)),
    )
