"""One PySyncObj node for benchmarks/idle.py, run by the PySyncObj venv's python
(benchmarks/setup.sh makes benchmarks/.peers-venv), not by the project's.

    python benchmarks/pysyncobj_node.py 127.0.0.1:PORT 127.0.0.1:PEER1 127.0.0.1:PEER2 ...

Election timeout 150-300 ms (ddg's default range), AppendEntries every 30 ms (etcd's heartbeat
in the peer rows), PySyncObj's own tick thread (autoTickPeriod 50 ms, its default). It prints
"state N" (0 follower, 1 candidate, 2 leader) on each change of its Raft state, so the
benchmark learns who leads without polling it; it runs until killed.
"""

import sys
import threading

from pysyncobj import SyncObj, SyncObjConf  # type: ignore[import-not-found]  # its own venv


def main(argv: list[str]) -> None:
    def changed(old: int, new: int) -> None:
        print(f"state {new}", flush=True)

    conf = SyncObjConf(raftMinTimeout=0.15, raftMaxTimeout=0.3, appendEntriesPeriod=0.03,
                       onStateChanged=changed, dynamicMembershipChange=False)
    SyncObj(argv[0], argv[1:], conf=conf)
    print("state 0", flush=True)
    threading.Event().wait()  # the SyncObj's tick thread does the work


if __name__ == "__main__":
    main(sys.argv[1:])
