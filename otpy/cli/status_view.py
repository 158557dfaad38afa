"""What ``otpy status`` prints: the node's ``Status`` as JSON-ready data (``--json``), the
CPU and memory of its running workers (psutil), and the table."""

from __future__ import annotations

import time

import msgspec
import psutil

from ..wire.protocol import Status, TreeEntry


def status_json(status: Status) -> dict:
    """The status as ``otpy status`` shows it (``--json`` prints it): a worker has no "children" key."""
    return {"node": status.node, "pid": status.pid, "tree": entry_json(status.tree)}


def entry_json(entry: TreeEntry) -> dict:
    shown = msgspec.structs.asdict(entry)
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


def render_status(report: dict) -> str:
    lines = [f"node {report['node']} (pid {report['pid']})",
             f"{'ID':<28}{'KIND':<20}{'STATE':<12}{'PID':>8}{'RESTARTS':>10}{'UPTIME':>10}{'CPU%':>7}{'RSS':>10}"]

    def add(entry: dict, depth: int) -> None:
        uptime = f"{entry['uptime']:.0f}s" if entry.get("uptime") is not None else "-"
        cpu = f"{entry['cpu_percent']:.1f}" if "cpu_percent" in entry else ""
        rss = f"{entry['rss_bytes'] / 2**20:.1f}M" if "rss_bytes" in entry else ""
        lines.append(f"{'  ' * depth + entry['id']:<28}{entry['kind']:<20}{entry['state']:<12}"
                     f"{entry['pid'] or '-':>8}{entry['restarts']:>10}{uptime:>10}{cpu:>7}{rss:>10}")
        for child in entry.get("children", []):
            add(child, depth + 1)

    add(report["tree"], 0)
    return "\n".join(lines)
