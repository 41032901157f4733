"""What a reload does: a pure plan from (the config running, the config read).

``plan_reload`` compares the two section by section and says, per change, what will be
done (``ReloadChange`` in protocol.py): programs added, removed, restarted (what they run
changed) or updated live (everything else about a program is read when it is used);
the janitor reopened; alerts and the model breaker built again; metrics served on a new
address, their counters kept; and what cannot change while clawsup runs (its control
socket, state directory, cgroups) kept as it was, "needs a clawsup restart".

The plan also carries the config to run with from now on: the new one, except for those
keys, so that every component keeps reading the values it was actually started with.
Nothing here does I/O; the supervisor (daemon.py) and the service (service.py) apply it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from clawsup.protocol import ReloadChange
from clawsup.supervisor.config import Config, ProgramConfig, SupervisorConfig

# A program's keys that shape the process it runs: a change takes a restart to apply.
SPAWN_KEYS = ("command", "environment", "directory", "user")
# A program's keys watched by the samplers and probes: their watch is started again.
WATCH_KEYS = ("hang", "liveness", "resources")
# [supervisor] keys applied live; every other one is bound when clawsup starts (the
# control sockets, the state directory, the cgroup tree).
LIVE_SUPERVISOR_KEYS = ("exit_on_fatal", "log_level")


@dataclass(frozen=True)
class ReloadPlan:
    changes: tuple[ReloadChange, ...]
    # The config to run with: the new one, but the old value of what needs a restart.
    config: Config

    def change(self, section: str) -> ReloadChange | None:
        return next((c for c in self.changes if c.section == section), None)

    def failed(self, errors: dict[str, str]) -> ReloadPlan:
        """The plan as applied: each section in ``errors`` carries why it failed."""
        if not errors:
            return self
        changes = tuple(
            msgspec.structs.replace(c, error=errors[c.section]) if c.section in errors else c
            for c in self.changes)
        return ReloadPlan(changes=changes, config=self.config)

    def summary(self) -> str:
        if not self.changes:
            return "no changes"
        count = len(self.changes)
        return f"{count} change{'s' if count != 1 else ''}: " + "; ".join(
            c.describe() for c in self.changes)


def changed_keys(old: msgspec.Struct | None, new: msgspec.Struct | None) -> list[str]:
    """The top-level fields of a config section that differ, in declaration order."""
    if old is None or new is None:
        return []
    return [name for name in old.__struct_fields__
            if getattr(old, name) != getattr(new, name)]


def plan_reload(old: Config, new: Config, *, tls: bool = True) -> ReloadPlan:
    """``tls``: whether the ssl module may be imported. A clawsup started with neither
    [alerts] nor [metrics] runs without it (entrypoint.py: 4.5 MiB of RSS) and can start
    neither until it restarts: prometheus_client imports ssl, and asyncio chose its no-TLS
    path when it was imported."""
    if not tls:
        unstartable = [s for s in ("alerts", "metrics")
                       if getattr(old, s) is None and getattr(new, s) is not None]
        if unstartable:
            bound = [ReloadChange(
                section=s, action="needs_restart",
                detail="clawsup started with neither [alerts] nor [metrics] runs without "
                       "TLS support, which these need") for s in unstartable]
            rest = plan_reload(old, msgspec.structs.replace(
                new, **dict.fromkeys(unstartable)))
            return ReloadPlan(changes=rest.changes + tuple(bound), config=rest.config)
    changes = [*_programs(old.programs, new.programs)]
    supervisor, keep = _supervisor(old.supervisor, new.supervisor)
    changes += supervisor
    if old.janitor != new.janitor:
        changes.append(ReloadChange(
            section="janitor", action="reopen", keys=changed_keys(old.janitor, new.janitor),
            detail="its directories are watched again; a full pass at once"))
    if old.gateway_config != new.gateway_config:
        changes.append(ReloadChange(
            section="gateway_config", action="update",
            keys=changed_keys(old.gateway_config, new.gateway_config)))
    changes += _optional("breaker", old.breaker, new.breaker,
                         "built again: its state starts over (closed, on the primary)")
    changes += _optional("alerts", old.alerts, new.alerts,
                         "built again on the new settings (alerts queued before are "
                         "still sent by the old one)")
    changes += _metrics(old, new)
    return ReloadPlan(changes=tuple(changes),
                      config=msgspec.structs.replace(new, supervisor=keep))


def _programs(old: dict[str, ProgramConfig],
              new: dict[str, ProgramConfig]) -> list[ReloadChange]:
    changes = []
    for name in old:
        if name not in new:
            changes.append(ReloadChange(section=f"programs.{name}", action="remove",
                                        detail="stopped, then forgotten"))
    for name, config in new.items():
        section = f"programs.{name}"
        if name not in old:
            changes.append(ReloadChange(
                section=section, action="add",
                detail="started" if config.autostart else "not started (autostart = false)"))
            continue
        keys = changed_keys(old[name], config)
        if not keys:
            continue
        if any(key in SPAWN_KEYS for key in keys):
            changes.append(ReloadChange(section=section, action="restart", keys=keys,
                                        detail="restarted if it runs"))
        else:
            watched = [key for key in keys if key in WATCH_KEYS]
            detail = (f"applied live, {' and '.join(watched)} watched anew" if watched
                      else "applied live, no restart")
            changes.append(ReloadChange(section=section, action="update", keys=keys,
                                        detail=detail))
    return changes


def _supervisor(old: SupervisorConfig,
                new: SupervisorConfig) -> tuple[list[ReloadChange], SupervisorConfig]:
    keys = changed_keys(old, new)
    live = [key for key in keys if key in LIVE_SUPERVISOR_KEYS]
    bound = [key for key in keys if key not in LIVE_SUPERVISOR_KEYS]
    changes = []
    if live:
        changes.append(ReloadChange(section="supervisor", action="update", keys=live))
    if bound:
        changes.append(ReloadChange(
            section="supervisor", action="needs_restart", keys=bound,
            detail="the running clawsup keeps the old value"))
    kept: dict[str, Any] = {key: getattr(old, key) for key in bound}
    # No __post_init__ on replace: the kept TCP endpoint and CURVE keys were checked together
    # when they were loaded, and the new ones are not used.
    return changes, msgspec.structs.replace(new, **kept)


def _optional(section: str, old: msgspec.Struct | None, new: msgspec.Struct | None,
              rebuilt: str) -> list[ReloadChange]:
    if old == new:
        return []
    if old is None:
        return [ReloadChange(section=section, action="start")]
    if new is None:
        return [ReloadChange(section=section, action="stop")]
    return [ReloadChange(section=section, action="rebuild", keys=changed_keys(old, new),
                         detail=rebuilt)]


def _metrics(old: Config, new: Config) -> list[ReloadChange]:
    if old.metrics == new.metrics:
        return []
    if old.metrics is None or new.metrics is None:
        return _optional("metrics", old.metrics, new.metrics, "")
    return [ReloadChange(section="metrics", action="restart",
                         keys=changed_keys(old.metrics, new.metrics),
                         detail=f"served on {new.metrics.listen}, counters kept")]
