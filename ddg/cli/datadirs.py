"""`ddg-node data-dirs`: the data dirs on this host (under $XDG_STATE_HOME/ddg, or --root),
which node and cluster each is, and whether it is still a member; `--prune` deletes the ones
that never will be again (removed, or replaced by another data dir), after a confirmation.

A data dir is kept whenever that cannot be told for sure: in use by a running node, its cluster
not in Redis (its members.json may be what restores the registry), Redis unreachable."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ddg.cli.admin import print_table
from ddg.cli.args import CliError, Parser, add_redis_arguments, redis_options
from ddg.errors import RegistryError, StorageError
from ddg.node.config import state_home
from ddg.node.storage import DataDir
from ddg.registry.records import Membership
from ddg.registry.redisconn import RedisOptions
from ddg.registry.registry import Registry

PRUNABLE = ("removed", "not a member")


@dataclass(frozen=True, slots=True)
class Found:
    path: Path
    name: str
    cluster: str
    state: str  # member, removed, not a member, in use, unknown (...)


def find(root: Path) -> list[Path]:
    """Data dirs (a node.json) at ROOT, ROOT/X or ROOT/X/Y (the default layout:
    ROOT/CLUSTER/NAME)."""
    found = []
    for pattern in ("node.json", "*/node.json", "*/*/node.json"):
        found += [p.parent for p in root.glob(pattern) if p.is_file()]
    return sorted(set(found))


def _identity(data: DataDir, root: Path) -> tuple[str, str]:
    """The node name and cluster: recorded in node.json, else from the default layout."""
    name, cluster = data.owner()
    rel = data.path.relative_to(root).parts if data.path != root else ()
    if name is None:
        name = rel[-1] if rel else "?"
    if cluster is None:
        cluster = rel[-2] if len(rel) >= 2 else "?"
    return name, cluster


async def _state(data: DataDir, name: str, cluster: str, registries: dict[str, Registry],
                 memberships: dict[str, Membership | str], options: RedisOptions) -> str:
    if data.in_use():
        return "in use"
    if data.load_removed() is not None:
        return "removed"
    node_id = data.node_id_if_any()
    if node_id is None or cluster == "?":
        return "unknown (no node id or cluster)"
    if cluster not in memberships:
        reg = registries[cluster] = Registry(options, cluster, timeout=2.0)
        try:
            memberships[cluster] = await reg.read()
        except RegistryError as exc:
            memberships[cluster] = f"unknown (Redis: {exc})"
    current = memberships[cluster]
    if isinstance(current, str):
        return current
    if current.cluster_id is None:
        return f"unknown (no cluster {cluster} in Redis)"
    if any(m.node_id == node_id for m in current.members.values()):
        return "member"
    cached = data.load_membership()
    if cached is not None and cached.cluster_id not in (None, current.cluster_id):
        # Re-made, or another Redis's cluster of the same name: not ours to tell, so kept.
        return "unknown (Redis holds another cluster of that name)"
    try:
        if await registries[cluster].was_removed(node_id):
            return "removed"
    except RegistryError as exc:
        return f"unknown (Redis: {exc})"
    if (cached is not None and name not in current.members
            and any(m.node_id == node_id for m in cached.members.values())):
        # Lost by a restore from an older membership, not removed: it adds itself back.
        return "lost entry (not removed: adds itself back when started)"
    try:
        took_part = data.load_hard_state().term > 0
    except StorageError:
        return "unknown (its state file is unreadable)"
    if cached is None and took_part:
        # It took part in elections, so it was a member; with no membership of its own to
        # compare, a Redis that lost its entry cannot be told from one that never had it.
        return "unknown (it was a member; Redis does not list it)"
    return "not a member"


def survey(root: Path, options: RedisOptions) -> list[Found]:
    async def go() -> list[Found]:
        registries: dict[str, Registry] = {}
        memberships: dict[str, Membership | str] = {}
        out = []
        try:
            for path in find(root):
                data = DataDir(path)
                name, cluster = _identity(data, root)
                try:
                    state = await _state(data, name, cluster, registries, memberships, options)
                except StorageError as exc:
                    state = f"unknown ({exc})"
                out.append(Found(path, name, cluster, state))
        finally:
            for reg in registries.values():
                await reg.close()
        return out

    return asyncio.run(go())


def cmd_data_dirs(argv: Sequence[str]) -> int:
    p = Parser(prog="ddg-node data-dirs",
               description="List this host's data dirs: the node and cluster of each, and "
                           "whether it is still a member (asks the registry). With --prune, "
                           "delete those that are not (removed, or replaced by another data "
                           "dir), after a confirmation; a data dir in use, or whose cluster "
                           "Redis does not hold or cannot be asked about, is always kept.")
    p.add_argument("--root", metavar="DIR",
                   help="where to look (default: $XDG_STATE_HOME/ddg, else "
                        "~/.local/state/ddg; DIR itself may be one data dir)")
    p.add_argument("--prune", action="store_true",
                   help="delete the data dirs that are not members (asks first)")
    p.add_argument("--yes", action="store_true", help="with --prune: do not ask")
    add_redis_arguments(p)  # --cluster is not used: each data dir has its own
    ns = p.parse_args(argv)
    if ns.yes and not ns.prune:
        raise CliError("--yes goes with --prune")
    root = Path(ns.root) if ns.root else state_home() / "ddg"
    if not root.is_dir():
        print(f"no data dirs: {root} does not exist")
        return 0
    found = survey(root, redis_options(ns))
    if not found:
        print(f"no data dirs under {root}")
        return 0
    print_table([("PATH", "NAME", "CLUSTER", "STATE")]
                + [(str(f.path), f.name, f.cluster, f.state) for f in found])
    if not ns.prune:
        return 0
    doomed = [f for f in found if f.state in PRUNABLE]
    if not doomed:
        print("nothing to prune")
        return 0
    if not ns.yes:
        print(f"delete {len(doomed)} data dir(s): "
              f"{', '.join(str(f.path) for f in doomed)}? [y/N] ", end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("nothing deleted")
            return 1
    for f in doomed:
        if DataDir(f.path).in_use():  # started since the survey
            print(f"kept {f.path}: a node started on it", file=sys.stderr)
            continue
        try:
            shutil.rmtree(f.path)
        except OSError as exc:
            raise CliError(f"cannot delete {f.path}: {exc.strerror or exc}") from None
        print(f"deleted {f.path} ({f.name}, cluster {f.cluster}, {f.state})")
    return 0
