"""What a spec must satisfy before anything starts, whoever built it (OTP's ``check_childspecs``).

One checker for every source of a spec, walking the tree with ``specs.model.places``: ids (the
name rule, each used once), each spec's values (bound fields' ``SCOPE.NAME`` included),
significance, ``replicas`` only on a dynamic supervisor's template and its replica ids, and
the wire's own net. A
topology file is read by ``topology.load``, which checks the shapes of its tables with
pydantic and then asks ``located_problems`` here, reporting each problem at its key path
(``supervisor.children[0].env.HOME``). Specs built in Python (``Node.from_spec``,
``start_child``, ``reconfigure``) or sent over the control socket come to ``spec_problems``
(``child 'ID': FIELD: ...``); an id arriving alone (``terminate_child``, a template's new
child) to ``id_problem``. Every message reads ``FIELD: got X; expected Y``; an empty list
means the spec may start. The rules of one spec's own values are ``specs.values``' (importable
from here too).

>>> from otpy.specs.model import ChildSpec, SupervisorSpec
>>> spec_problems(SupervisorSpec(id="team", children=(ChildSpec(id="a", command=("true",)),
...                                                   ChildSpec(id="a", program="m:f"))))
["child 'a': id: got 'a' used twice in this spec (OTP's duplicate_child_name); expected ids unique in the node"]
>>> for problem in spec_problems(ChildSpec(id="../x", command=("true",), env={"A=B": "1"})):
...     print(problem)
child '../x': id: got '../x'; expected a name of 1 to 64 letters, digits, '_', '.' and '-', starting with a letter, digit or '_'
child '../x': env."A=B": got key 'A=B'; expected a non-empty key without '=' or NUL
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping

import msgspec

from .bindings import replica_id, replica_of
from .model import (
    NAME_EXPECTED, AnySpec, Bound, ChildSpec, DynamicSupervisorSpec, NodeSpec, Place, SupervisorSpec, from_template,
    join, name_problem, places, toml_key,
)
from .values import (
    ARGS_MAX_DEPTH, MAX_COUNT, MAX_SECONDS, MAX_SPEC_BYTES, Problem, control_tcp_problem, node_value_problems, show,
    value_problems,
)

__all__ = [
    # the tree
    "spec_problems", "located_problems", "node_problems", "template_start_problems", "id_problem",
    "reconfigure_problems", "significance_problem", "wire_problem", "located_machine_problems",
    "socket_path_problem", "node_socket_problem", "NODE_SOCKETS", "SUN_PATH_MAX", "replica_id_problems",
    # one spec's values (specs.values) and key paths (specs.model)
    "Problem", "value_problems", "node_value_problems", "control_tcp_problem", "show", "toml_key",
    "ARGS_MAX_DEPTH", "MAX_COUNT", "MAX_SECONDS", "MAX_SPEC_BYTES",
]

Parent = SupervisorSpec | DynamicSupervisorSpec

# --- the whole tree: the one checker --------------------------------------------------------


def spec_problems(spec: AnySpec, parent: Parent | None = None, *, node_folder: str | None = None) -> list[str]:
    """Every problem of ``spec`` and the specs below it; ``parent``: the supervisor it goes under.

    Each as ``child 'ID': FIELD: got X; expected Y``, for specs built in Python or sent over
    the control socket. With ``node_folder``, each child's agent socket must fit AF_UNIX too."""
    return [f"{_name(place)}: {_line(problem)}" for place, problem in _checked(spec, parent, "", node_folder)]


def located_problems(spec: AnySpec, path: str, *, node_folder: str | None = None) -> list[Problem]:
    """The same problems as ``spec_problems``, each at its key path under ``path``
    (``supervisor.children[0].env.HOME``): a topology file's, whose shapes pydantic checked."""
    return [Problem(join(place.path, problem.field), problem.message)
            for place, problem in _checked(spec, None, path, node_folder)]


def _checked(spec: AnySpec, parent: Parent | None, path: str, node_folder: str | None) -> list[tuple[Place, Problem]]:
    """Every problem of the tree, with the place of the spec it belongs to: ids (the name
    rule, each once in the tree), each spec's values, significance, agent sockets (with
    ``node_folder``), and last the wire's own net. ``path`` non-empty: a file, whose
    messages name where an id was first used."""
    found: list[tuple[Place, Problem]] = []
    first_use: dict[object, str] = {}
    for place in places(spec, path, parent):
        sub = place.spec
        problems = [] if place.template is not None else _id_problems(place, first_use, located=bool(path))
        problems += value_problems(sub)
        if (problem := _significance(sub, place.parent)) is not None:
            problems.append(problem)
        if not problems:
            problems += _replicas_place_problems(place, node_folder)
        if node_folder is not None and not problems and isinstance(sub, ChildSpec) and place.template is None:
            problems += _socket_problems(sub.id, node_folder)
        found += [(place, problem) for problem in problems]
    found += replica_id_clashes(spec, path)
    if not found and (wire := wire_problem(spec)) is not None:
        found.append((Place(path, parent, spec), wire))
    return found


def replica_templates(spec: AnySpec) -> dict[str, str]:
    """``{template: supervisor id}`` for every template with ``replicas`` in ``spec``'s tree."""
    return {place.template: place.parent.id for place in places(spec)
            if place.template is not None and getattr(place.spec, "replicas", None) is not None}


def replica_clash(child_id: str, supervisor: str | None, templates: Mapping[str, str]) -> str | None:
    """Why ``child_id`` cannot be a child of ``supervisor``: it is a replica id (``TEMPLATE-N``)
    of one of ``templates`` (``replica_templates``) that another supervisor keeps, so the
    replica would share its agent socket with it. None when it can."""
    name, _, index = child_id.rpartition("-")
    owner = templates.get(name)
    if owner is None or owner == supervisor or not index.isdigit() or index.startswith("0"):
        return None
    return f"got {child_id!r}, a replica id of the template {name!r} (under {owner!r}); expected an id its replicas never take"


def replica_id_clashes(spec: AnySpec, path: str = "") -> list[tuple[Place, Problem]]:
    """Every id of ``spec``'s tree that is a replica id of a template of another supervisor."""
    reserved = replica_templates(spec)
    return [(place, Problem("id", problem)) for place in places(spec, path) if place.template is None
            if (problem := replica_clash(place.spec.id, place.parent.id if place.parent else None, reserved))]


def node_problems(spec: NodeSpec, *, node_folder: str | None = None) -> list[str]:
    """``spec_problems`` of the root, and the node's own fields (its name names a folder)."""
    return ([f"node {_line(problem)}" for problem in node_value_problems(spec)]
            + spec_problems(spec.root, node_folder=node_folder))


def template_start_problems(owner: AnySpec, template: str, child_id: object, args: object) -> list[str]:
    """``spec_problems`` of the child ``start_child`` would make from ``owner``'s ``template``.

    The new id and the extra args come from the caller (CLI, wire), so they are checked like
    any spec; an unknown template or owner is left to the supervisor to answer (not_found)."""
    if not isinstance(owner, DynamicSupervisorSpec) or template not in owner.templates:
        return []
    if not isinstance(args, dict):
        return [f"child {child_id!r}: args: got {show(args)}; expected a table"]
    # One child from the template: how many replicas its supervisor keeps is the template's.
    child = msgspec.structs.replace(from_template(owner.templates[template], child_id, args), replicas=None)
    return spec_problems(child, owner)


def id_problem(child_id: object, node_folder: str | None = None) -> str | None:
    """Why ``child_id``, arriving alone (``start_from_template``'s new id, the id of
    ``terminate_child``, ``restart_child``, ``delete_child``, ``reconfigure``'s source), cannot be
    a child's id: the name rule, and with ``node_folder`` its agent socket within AF_UNIX's limit."""
    if (problem := name_problem(child_id)) is not None:
        return problem
    if node_folder is not None and (too_long := _socket_problems(child_id, node_folder)):
        return f"id {too_long[0].message.removeprefix('got ')}"
    return None


def reconfigure_problems(source: object, target: AnySpec, parent: Parent | None,
                         *, node_folder: str | None = None) -> list[str]:
    """Why the running child ``source`` cannot be replaced by ``target`` under ``parent``:
    ``id_problem`` of the source, the same id for both, and ``spec_problems`` of the target."""
    if (problem := id_problem(source)) is not None:
        return [problem]
    if getattr(target, "id", None) != source:
        return [f"{_name(Place('', parent, target))}: id: got {show(getattr(target, 'id', None))}; expected "
                f"{source!r}, the id of the child it replaces"]
    return spec_problems(target, parent, node_folder=node_folder)


def located_machine_problems(spec: AnySpec, path: str) -> list[Problem]:
    """What this machine lacks to start ``spec``'s children: a ``cwd`` that is not a folder, a
    command not found (on the PATH the child will have: its env's, else this process's) or not
    executable. ``validate`` asks; a node asks no more (a command may be installed later, and
    a start fails with the same reason)."""
    problems = []
    for place in places(spec, path):
        if isinstance(place.spec, ChildSpec) and not value_problems(place.spec):
            problems += [Problem(join(place.path, p.field), p.message) for p in _machine_problems(place.spec)]
    return problems


def _machine_problems(spec: ChildSpec) -> list[Problem]:
    cwd = os.path.abspath(os.path.expanduser(spec.cwd)) if spec.cwd else os.getcwd()
    if spec.cwd and not os.path.isdir(cwd):
        why = "which is not a folder" if os.path.exists(cwd) else "which does not exist"
        return [Problem("cwd", f"got {show(spec.cwd)}, {why}; expected the folder the child starts in")]
    if spec.command is None:
        return []
    command = spec.command[0]
    if "/" in command:
        found = os.path.join(cwd, command)
        ok = os.path.isfile(found) and os.access(found, os.X_OK)
    else:
        search = spec.env.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(command, path=os.pathsep.join(os.path.join(cwd, folder) for folder in
                                                            search.split(os.pathsep)))
        ok = found is not None
    if ok:
        return []
    where = "" if "/" in command else " on PATH"
    return [Problem("command[0]", f"got {show(command)}, not found{where} or not executable; expected a program "
                                  "to run")]


SUN_PATH_MAX = 107  # bytes of an AF_UNIX socket path: sockaddr_un.sun_path is 108, its NUL included
# The sockets a node binds itself, under its folder; the zygote's spare binds the longest
# (its pid, up to the kernel's pid_max of 4194304).
NODE_SOCKETS = ("control.sock", "events.sock", "registry-events.sock", "agents/.spare-4194304.sock")


def _socket_problems(child_id: object, node_folder: str) -> list[Problem]:
    """A child whose agent socket ``<node_folder>/agents/<id>.sock`` would be longer than an
    AF_UNIX path may be, at its id (the name rule is checked on its own)."""
    if name_problem(child_id) is not None:
        return []
    if (problem := socket_path_problem(f"{node_folder}/agents/{child_id}.sock")) is not None:
        return [Problem("id", f"got {child_id!r}: {problem}")]
    return []


def node_socket_problem(node_folder: str) -> str | None:
    """Why a node cannot bind its own sockets in ``node_folder`` (the longest, ``NODE_SOCKETS``'
    spare, too long for AF_UNIX), or None."""
    return socket_path_problem(os.path.join(node_folder, max(NODE_SOCKETS, key=len)))


def socket_path_problem(socket_path: str) -> str | None:
    """Why ``socket_path`` cannot be bound (too long for AF_UNIX), or None."""
    size = len(socket_path.encode())
    if size <= SUN_PATH_MAX:
        return None
    return (f"its socket {socket_path} would be {size} bytes long; expected at most {SUN_PATH_MAX} "
            "(AF_UNIX): a shorter id or node name, or a shorter runtime folder (OTPY_RUNTIME_DIR)")


def _replicas_place_problems(place: Place, node_folder: str | None) -> list[Problem]:
    """``replicas`` belongs to a dynamic supervisor's template (its supervisor keeps that many
    children from it): anywhere else it is a problem, except on those children themselves
    (``from_template`` keeps the field). A template's replica ids must be ids: the last one of a
    count, the first one of a bound count (its variable's range is the topology's to check)."""
    spec = place.spec
    if not isinstance(spec, ChildSpec) or spec.replicas is None:
        return []
    if place.template is not None:
        count = 1 if isinstance(spec.replicas, Bound) else spec.replicas
        return replica_id_problems(place.template, count, node_folder, got=spec.replicas)
    parent = place.parent
    if isinstance(parent, DynamicSupervisorSpec) and replica_of(spec.id, parent.templates) is not None:
        return []
    return [Problem("replicas", f"got {show(spec.replicas)} on a child; expected no replicas: only a dynamic "
                                "supervisor's template has replicas ([...templates.NAME] replicas = N: the "
                                "supervisor keeps N children from it)")]


def replica_id_problems(template: str, count: int, node_folder: str | None = None, *, got: object = None
                        ) -> list[Problem]:
    """Why the ids of ``count`` replicas of ``template`` (``TEMPLATE-1`` to ``TEMPLATE-count``,
    ``specs.bindings.replica_ids``) cannot all be child ids: the longest must pass the name rule
    and, with ``node_folder``, fit its agent socket. ``got``: the value shown (the count)."""
    if count < 1 or name_problem(template) is not None:
        return []
    last = replica_id(template, count)  # the longest: never the whole list (count may be huge)
    shown = show(count if got is None else got)
    if name_problem(last) is not None:
        return [Problem("replicas", f"got {shown}: the replica id {last!r} is not an id (expected {NAME_EXPECTED}); "
                                    "expected fewer replicas or a shorter template name")]
    if node_folder is not None and (socket := _socket_problems(last, node_folder)):
        return [Problem("replicas", f"got {shown}: the replica id {last!r}: "
                                    f"{socket[0].message.removeprefix(f'got {last!r}: ')}")]
    return []


def _id_problems(place: Place, first_use: dict[object, str], *, located: bool) -> list[Problem]:
    spec_id = place.spec.id
    if (problem := name_problem(spec_id)) is not None:
        return [Problem("id", f"got {problem.removeprefix('id ')}")]
    if spec_id in first_use:
        where = f"this topology, first at {first_use[spec_id]}" if located else "this spec"
        return [Problem("id", f"got {spec_id!r} used twice in {where} (OTP's duplicate_child_name); "
                              "expected ids unique in the node")]
    first_use[spec_id] = join(place.path, "id")
    return []


def significance_problem(spec: AnySpec, parent: Parent | None) -> str | None:
    """Why ``spec`` cannot be a significant child of ``parent`` (OTP's rules), as one line
    ``child 'ID': significant: got ...; expected ...``, or None. The one significance rule:
    topology files, Python specs, the wire and the supervision machines ask it."""
    problem = _significance(spec, parent)
    return None if problem is None else f"{_name(Place('', parent, spec))}: {_line(problem)}"


def _significance(spec: AnySpec, parent: Parent | None) -> Problem | None:
    if spec.significant is not True:
        return None
    if spec.restart == "permanent":
        return Problem("significant", "got true with restart 'permanent'; expected transient or "
                                      "temporary (OTP's bad_combination)")
    if isinstance(parent, DynamicSupervisorSpec):
        return Problem("significant", f"got true under dynamic supervisor {parent.id!r}; "
                                      "expected false (dynamic supervisors never auto-shut down)")
    if isinstance(parent, SupervisorSpec) and parent.auto_shutdown == "never":
        return Problem("significant", f"got true under {parent.id!r}, whose auto_shutdown is 'never'; "
                                      "expected false")
    return None


def wire_problem(spec: AnySpec) -> Problem | None:
    """Why ``spec`` cannot cross the wire (node, zygote, control socket) as it is, or None.

    The last net under the explicit rules: msgspec's own encoder and typed decoder."""
    try:
        msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=type(spec))
    except (msgspec.MsgspecError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        return Problem("", f"cannot be sent as msgpack: {type(exc).__name__}: {exc}; expected a spec of "
                           "the documented types")
    return None


def _line(problem: Problem) -> str:
    return f"{problem.field}: {problem.message}" if problem.field else problem.message


def _name(place: Place) -> str:
    """How a runtime message names the spec: ``child 'a'``, ``supervisor 's'``, and a
    template by where it is (``child 'd.templates.t'``)."""
    spec = place.spec
    shown = spec.id if place.template is None or place.parent is None else f"{place.parent.id}.templates.{place.template}"
    kind = getattr(spec, "kind", "worker")
    return f"{kind.replace('_', ' ')} {shown!r}" if kind != "worker" else f"child {shown!r}"


