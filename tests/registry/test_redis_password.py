"""A Redis password: never shown (status, logs, command lines), and a wrong one is a one-line
error. Each against real nodes: real redis-server, real ddg-node processes, real HTTP; every
wait has a deadline (fixed-time loops only observe)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import httpx
import pytest

from ddg.local.embedded import free_port
from ddg_testkit.adversary import (
    Make,
    check_cli_output,
    everyone_sees,
    log_text,
    nonblank_lines,
    redis_with_password,
    run_ddg,
)

pytestmark = pytest.mark.integration


# ---- Redis password ----------------------------------------------------------------------


PASSWORD = "pw-" + secrets.token_hex(12)


@pytest.mark.parametrize("how", ["in-url", "password-file"])
def test_redis_password_is_never_shown(make_cluster: Make, tmp_path: Path, how: str) -> None:
    with redis_with_password(PASSWORD) as port:
        if how == "in-url":
            url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
            c = make_cluster(redis_url=url)
            names = c.start(3)
        else:
            url = f"redis://127.0.0.1:{port}/0"
            pwfile = tmp_path / "redis-password"
            pwfile.write_text(PASSWORD + "\n")
            pwfile.chmod(0o600)
            c = make_cluster(redis_url=url)
            names = [f"p{i}" for i in range(1, 4)]
            for i, n in enumerate(names):
                c.add(n, bootstrap=i == 0,
                           extra_args=["--redis-password-file", str(pwfile)])
        c.wait_goose(among=names, timeout=8)
        c.wait_for(lambda: everyone_sees(c, names), timeout=5, what="3 members everywhere")
        problems: list[str] = []
        for n in names:
            raw = httpx.get(c.address(n) + "/status").text
            if PASSWORD in raw:
                problems.append(f"{n}: the password is in /status")
            redis_st = json.loads(raw).get("redis") or {}
            shown = redis_st.get("url")
            # (the launcher hands a URL's password to the node by DDG_REDIS_PASSWORD, so the
            # node's own URL has none: /status shows it without, never with the password)
            if shown is None or PASSWORD in shown or not shown.endswith(f"127.0.0.1:{port}/0"):
                problems.append(f"{n}: /status redis.url should be the URL without its "
                                f"password: {redis_st}")
            if PASSWORD in log_text(c, n):
                problems.append(f"{n}: the password is in the log")
            pid = c.pid(n)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if PASSWORD in cmdline:  # (in-url too: the launcher passes it by environment)
                problems.append(f"{n}: the password is in the command line")
        if how == "in-url":
            rc, out, _ = run_ddg(["status", "--redis-url", url, "--cluster", c.cluster],
                                 timeout=15)
            if rc != 0 or PASSWORD in out:
                problems.append(f"`ddg-node status`: rc {rc}, output {out!r}")
            dead_url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
            rc, out, _ = run_ddg(["status", "--redis-url", dead_url, "--cluster", c.cluster],
                                 timeout=15)
            if PASSWORD in out:
                problems.append(f"`ddg-node status` error shows the password: {out!r}")
            problems += check_cli_output(rc, out)
        assert not problems, "\n".join(problems)


def about_auth(text: str) -> bool:
    """Says the credentials were refused (not merely 'cannot reach Redis')."""
    return any(word in text.lower() for word in ("auth", "password", "credential"))


def test_wrong_redis_password_exits_with_a_clear_error(make_cluster: Make) -> None:
    wrong = "wrong-" + secrets.token_hex(12)
    with redis_with_password(PASSWORD) as port:
        url = f"redis://:{wrong}@127.0.0.1:{port}/0"
        c = make_cluster(redis_url=url)
        t0 = time.monotonic()
        node = c.add().name
        rc = c.wait(node, 5)
        took = time.monotonic() - t0
        out = log_text(c, node)
        problems: list[str] = []
        if rc in (None, 0):
            problems.append(f"wrong password: {'still running' if rc is None else 'exit 0'} "
                            f"after {took:.1f} s; log:\n{out[-1000:]}")
        lines = nonblank_lines(out)
        if "Traceback" in out or not lines or not about_auth(lines[-1]):
            problems.append(f"expected a last line about authentication, no traceback: "
                            f"{out[-1000:]!r}")
        if wrong in out or PASSWORD in out:
            problems.append("the password is in the node's output")
        rc2, cli_out, _ = run_ddg(["status", "--redis-url", url, "--cluster", c.cluster],
                                  timeout=15)
        if wrong in cli_out:
            problems.append(f"`ddg-node status` shows the password: {cli_out!r}")
        if rc2 in (None, 0) or not about_auth(cli_out):
            problems.append(f"`ddg-node status` with a wrong password: rc {rc2} {cli_out!r}")
        problems += check_cli_output(rc2, cli_out)
        assert not problems, "\n".join(problems)
