"""What ``otpy status`` prints: the node's ``Status`` as JSON-ready data (``--json``), the
CPU and memory of its running workers (psutil), and the table.

A program child shows its running ``program`` ("module:attr"); a child bound to a variable,
``bound`` (``{"variable": "SCOPE.NAME", "version": N}``: the registry version it runs, 0 for
the default); one an operator stopped although its variables say it runs, ``override``."""

from __future__ import annotations

import time

import msgspec
import psutil

from ..wire.protocol import Status, TreeEntry


def status_json(status: Status) -> dict:
    """The status as ``otpy status`` shows it (``--json`` prints it): a worker has no "children" key."""
    return {"node": status.node, "pid": status.pid, "tree": entry_json(status.tree)}


def entry_json(entry: TreeEntry) -> dict:
    """One entry as plain data (``bound`` a table, or None); a worker has no "children" key."""
    shown = msgspec.to_builtins(msgspec.structs.replace(entry, children=None))
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


PROGRAM_WIDTH = 32


def clipped(text: str, width: int) -> str:
    """``text`` in at most ``width - 1`` characters (a column's gap kept), cut at its start
    with '…': the end says most (the program's class, the variable it is bound to)."""
    return text if len(text) < width else "…" + text[len(text) - width + 2:]


def state_text(entry: dict) -> str:
    """The state column: ``stopped (override)`` for a child an operator stopped."""
    return f"{entry['state']} (override)" if entry.get("override") else entry["state"]


def program_text(entry: dict) -> str:
    """The program column: the program, ``@SCOPE.NAME`` after it when bound (supervisors: -)."""
    program = entry.get("program") or "-"
    bound = entry.get("bound")
    return f"{program} @{bound['variable']}" if bound else program


def id_width(entry: dict, depth: int = 0) -> int:
    """The ID column: 28 wide, or as wide as the longest indented id and a gap."""
    own = 2 * depth + len(entry["id"]) + 2
    return max([28, own, *(id_width(child, depth + 1) for child in entry.get("children", []))])


def render_status(report: dict) -> str:
    width = id_width(report["tree"])
    lines = [f"node {report['node']} (pid {report['pid']})",
             f"{'ID':<{width}}{'KIND':<20}{'STATE':<20}{'PROGRAM':<{PROGRAM_WIDTH}}{'PID':>8}{'RESTARTS':>10}"
             f"{'UPTIME':>10}{'CPU%':>7}{'RSS':>10}"]

    def add(entry: dict, depth: int) -> None:
        uptime = f"{entry['uptime']:.0f}s" if entry.get("uptime") is not None else "-"
        cpu = f"{entry['cpu_percent']:.1f}" if "cpu_percent" in entry else ""
        rss = f"{entry['rss_bytes'] / 2**20:.1f}M" if "rss_bytes" in entry else ""
        program = clipped(program_text(entry), PROGRAM_WIDTH)
        lines.append(f"{'  ' * depth + entry['id']:<{width}}{entry['kind']:<20}{state_text(entry):<20}"
                     f"{program:<{PROGRAM_WIDTH}}{entry['pid'] or '-':>8}{entry['restarts']:>10}{uptime:>10}"
                     f"{cpu:>7}{rss:>10}")
        for child in entry.get("children", []):
            add(child, depth + 1)

    add(report["tree"], 0)
    return "\n".join(lines)
