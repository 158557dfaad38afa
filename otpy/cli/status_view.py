"""What ``otpy status`` prints: the node's ``Status`` as JSON-ready data (``--json``), the
CPU and memory of its running workers (psutil), and the table.

A program child shows its running ``program`` ("module:attr"); a child bound to a variable,
``bound`` (``{"variable": "SCOPE.NAME", "version": N}``: the registry version it runs, 0 for
the default); one an operator stopped although its variables say it runs, ``override``; one with
hot standbys, ``standby`` (how many are ready) and ``standby_mib`` (their private memory)."""

from __future__ import annotations

import time

import msgspec
import psutil

from ..wire.protocol import Status, TreeEntry


def status_json(status: Status) -> dict:
    """The status as ``otpy status`` shows it (``--json`` prints it): a worker has no "children" key."""
    return {"node": status.node, "pid": status.pid, "tree": entry_json(status.tree)}


def entry_json(entry: TreeEntry) -> dict:
    """One entry as plain data (``bound`` a table, or None); a worker has no "children" key; a
    child with hot standbys ready has ``standby`` and ``standby_mib`` (others have neither)."""
    shown = msgspec.to_builtins(msgspec.structs.replace(entry, children=None))
    if not shown.get("standby"):  # only a child with hot standbys ready shows them (as rss_bytes: running)
        shown.pop("standby", None)
        shown.pop("standby_mib", None)
    if entry.children is None:
        del shown["children"]
    else:
        shown["children"] = [entry_json(child) for child in entry.children]
    return shown


def running_workers(entry: dict) -> list[dict]:
    if "children" not in entry:
        return [entry] if entry["pid"] and entry["state"] == "running" else []
    return [w for child in entry["children"] for w in running_workers(child)]


def add_usage(tree: dict) -> None:
    """CPU % (over 0.1 s) and RSS of every running worker, read with psutil."""
    procs = {}
    for worker in running_workers(tree):
        try:
            procs[id(worker)] = (worker, psutil.Process(worker["pid"]))
            procs[id(worker)][1].cpu_percent(None)
        except psutil.Error:
            pass
    if procs:
        time.sleep(0.1)
    for worker, proc in procs.values():
        try:
            worker["cpu_percent"] = proc.cpu_percent(None)
            worker["rss_bytes"] = proc.memory_info().rss
        except psutil.Error:
            pass


def find_entry(entry: dict, entry_id: str) -> dict | None:
    """The entry ``entry_id`` in the tree ``entry`` (a supervisor's, with its subtree), or None."""
    if entry["id"] == entry_id:
        return entry
    return next((found for child in entry.get("children", []) if (found := find_entry(child, entry_id))), None)


IN_TRANSITION = ("restarting", "starting", "stopping")  # a crash loop, a delayed restart, a start or stop under way


def not_running(entry: dict, top: bool = True) -> list[str]:
    """The ids that make ``otpy status`` exit 3: the entry shown (the root, or ID) when it is not
    ``running``, as ``systemctl status UNIT``; below it, a child in transition (restarting,
    starting, stopping), as ``systemctl is-system-running`` says "degraded". A child stopped on
    purpose (disabled, terminated by an operator, a transient child that ended) does not count."""
    own = entry["state"] != "running" if top else entry["state"] in IN_TRANSITION
    return ([entry["id"]] if own else []) + [i for child in entry.get("children", [])
                                             for i in not_running(child, top=False)]


def state_text(entry: dict) -> str:
    """The state column: ``stopped (override)`` for a child an operator stopped, ``restarting
    in 1.5s`` for a delayed restart (``restart_delay``)."""
    if entry.get("override"):
        return f"{entry['state']} (override)"
    if entry.get("restart_in") is not None:
        return f"{entry['state']} in {entry['restart_in']:.1f}s"
    return entry["state"]


def program_text(entry: dict) -> str:
    """The program column: the program, ``@SCOPE.NAME`` after it when bound (supervisors: -)."""
    program = entry.get("program") or "-"
    bound = entry.get("bound")
    return f"{program} @{bound['variable']}" if bound else program


def status_text(entry: dict) -> str:
    """The STATUS column: what the child said of itself (sd_notify ``STATUS=``), then its hot
    standbys and their private memory (``standby 1 (2.9 MiB)``), if it has any ready."""
    parts = [entry["status_line"]] if entry.get("status_line") else []
    if entry.get("standby"):
        parts.append(f"standby {entry['standby']} ({entry.get('standby_mib', 0.0):.1f} MiB)")
    return "; ".join(parts)


def _rows(entry: dict, depth: int = 0) -> list[tuple[str, ...]]:
    uptime = f"{entry['uptime']:.0f}s" if entry.get("uptime") is not None else "-"
    cpu = f"{entry['cpu_percent']:.1f}" if "cpu_percent" in entry else ""
    rss = f"{entry['rss_bytes'] / 2**20:.1f}M" if "rss_bytes" in entry else ""
    row = ("  " * depth + entry["id"], entry["kind"], state_text(entry), program_text(entry), str(entry["pid"] or "-"),
           str(entry["restarts"]), uptime, cpu, rss, status_text(entry))
    return [row] + [r for child in entry.get("children", []) for r in _rows(child, depth + 1)]


HEADER = ("ID", "KIND", "STATE", "PROGRAM", "PID", "RESTARTS", "UPTIME", "CPU%", "RSS", "STATUS")
RIGHT = {"PID", "RESTARTS", "UPTIME", "CPU%", "RSS"}  # numbers, aligned on their last digit


def render_status(report: dict) -> str:
    """The table: every column as wide as its widest cell (nothing is cut: ``--json`` has the
    same values), two spaces apart; ``STATUS`` (a child's sd_notify ``STATUS=``, its hot
    standbys) only when a child has one."""
    rows = [HEADER, *_rows(report["tree"])]
    columns = len(HEADER) if any(row[-1] for row in rows[1:]) else len(HEADER) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(columns)]

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(width) if HEADER[i] in RIGHT else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([f"node {report['node']} (pid {report['pid']})", *(line(row) for row in rows)])
