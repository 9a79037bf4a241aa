"""Two hosts on one machine: Linux network namespaces joined by a bridge.

:func:`two_hosts` builds, for the duration of a ``with`` block::

    root namespace:  bridge tk<pid>b<n>, 10.213.X.1/24, up
    namespace a:     lo up; eth0 (veth to the bridge) 10.213.X.2/24; default via .1
    namespace b:     lo up; eth0 (veth to the bridge) 10.213.X.3/24; default via .1

Rules:

* X is 0 unless another run already holds 10.213.0.1 (then the next free X), so
  two test runs on one machine do not share a subnet.
* Names carry the pid of the test process and a counter (namespaces
  ``tetik-<pid>-<n>-a``, links ``tk<pid>b<n>`` / ``tk<pid>v<n>a``), so they are
  unique per run and per block, and fit Linux's 15-character link names.
* On leaving the block, however it is left (also when building it failed half
  way), every process still running inside a namespace is SIGKILLed, the
  namespaces and the bridge are deleted: nothing is left. Deleting a namespace
  removes its end of the veth pair, and with it the other end.
* Leftovers of an earlier run that was SIGKILLed (its pid no longer alive) are
  removed on entry.
* Where namespaces cannot be made (not root, no ``ip``, no permission in a
  container) entering the block raises ``pytest.skip`` with the reason.

A process runs inside a namespace with ``ip netns exec NAME argv...``:
:meth:`Host.argv` gives that argument list, :meth:`Host.popen` starts it.
Servers of the root namespace that bind the bridge address
(:attr:`TwoHosts.bridge_ip`) are reachable from both hosts; each host reaches
the other by its own address (:attr:`Host.ip`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

PREFIX_NET = "10.213"
_COMMAND_TIMEOUT_S = 10.0
_blocks = itertools.count()
_OURS = re.compile(r"^tk(\d+)(?:b\d+|v\d+[ab])$")  # bridge tk<pid>b<n>, veths tk<pid>v<n>a/b
_OUR_NS = re.compile(r"^tetik-(\d+)-(?:\d+-[ab]|probe)$")


@dataclass(frozen=True)
class Host:
    """One namespace: its name and its address on the bridge."""

    name: str
    ip: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside this namespace (a subprocess.Popen argument list)."""
        return in_namespace(self.name, command)

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``command`` inside this namespace; ``kwargs`` go to subprocess.Popen."""
        return subprocess.Popen(self.argv(command), **kwargs)

    def run(self, command: Sequence[str], timeout: float = 30.0) -> str:
        """Run ``command`` inside this namespace to its end; its stdout (error if it fails)."""
        done = subprocess.run(
            self.argv(command), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} in {self.name} exited {done.returncode}: {done.stderr}"
            )
        return done.stdout


@dataclass(frozen=True)
class TwoHosts:
    """What :func:`two_hosts` made: the bridge (root namespace) and the two hosts."""

    bridge: str
    bridge_ip: str
    a: Host
    b: Host

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    @property
    def links(self) -> list[str]:
        """Every link name made in the root namespace (the bridge and the veth ends)."""
        return [self.bridge, *(_veth(self.bridge, h) for h in ("a", "b"))]


def in_namespace(name: str, command: Sequence[str]) -> list[str]:
    """``ip netns exec NAME command...`` as an argument list."""
    return ["ip", "netns", "exec", name, *command]


def _veth(bridge: str, host: str) -> str:
    return bridge.replace("b", "v", 1) + host  # tk<pid>b<n> -> tk<pid>v<n>a


def _ip(*args: str, check: bool = True) -> str:
    """Run ``ip args...``; its stdout. With ``check``, a failure raises RuntimeError."""
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """Names of the network namespaces that exist now."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def links() -> list[str]:
    """Names of the links of the root namespace."""
    names = re.findall(r"^\d+: ([^:@]+)", _ip("-o", "link", "show"), flags=re.MULTILINE)
    return [name.strip() for name in names]


def _unavailable() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if shutil.which("ip") is None:
        return "network namespaces need the ip command (iproute2), which is not on PATH"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); this run is not root"
    probe = f"tetik-{os.getpid()}-probe"
    done = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        return f"cannot make a network namespace here: {done.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_namespace(name: str) -> None:
    """SIGKILL every process inside ``name`` (they are this run's), then delete it."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    _ip("netns", "delete", name, check=False)


def _sweep_stale() -> None:
    """Remove the namespaces and links of earlier runs whose process is gone."""
    for name in namespaces():
        match = _OUR_NS.match(name)
        if match and not _alive(int(match.group(1))):
            _remove_namespace(name)
    for name in links():
        match = _OURS.match(name)
        if match and not _alive(int(match.group(1))):
            _ip("link", "delete", name, check=False)


def _free_subnet() -> str:
    """``10.213.X`` whose .1 no interface of the root namespace holds yet."""
    taken = set(re.findall(rf"inet {re.escape(PREFIX_NET)}\.(\d+)\.", _ip("-4", "-o", "addr")))
    for third in range(256):
        if str(third) not in taken:
            return f"{PREFIX_NET}.{third}"
    raise RuntimeError(f"every {PREFIX_NET}.X.0/24 subnet is in use")


def _add_host(stack: contextlib.ExitStack, bridge: str, name: str, veth: str, ip: str) -> Host:
    """A namespace with lo up and a veth into ``bridge`` at ``ip``/24, default via .1."""
    _ip("netns", "add", name)
    stack.callback(_remove_namespace, name)
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
    stack.callback(_ip, "link", "delete", veth, check=False)  # gone with the namespace
    _ip("link", "set", veth, "master", bridge, "up")
    _ip("-n", name, "link", "set", "lo", "up")
    _ip("-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
    _ip("-n", name, "link", "set", "eth0", "up")
    gateway = ip.rsplit(".", 1)[0] + ".1"
    _ip("-n", name, "route", "add", "default", "via", gateway)
    return Host(name, ip)


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    """A bridge with an address in the root namespace and two namespaces on it (see the
    module docstring); everything is removed on leaving. Skips where it cannot be made."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    _sweep_stale()
    pid, block = os.getpid(), next(_blocks)
    bridge = f"tk{pid}b{block}"
    with contextlib.ExitStack() as stack:
        subnet = _free_subnet()
        _ip("link", "add", bridge, "type", "bridge")
        stack.callback(_ip, "link", "delete", bridge, check=False)  # runs last
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        a, b = (
            _add_host(stack, bridge, f"tetik-{pid}-{block}-{h}", _veth(bridge, h), f"{subnet}.{i}")
            for h, i in (("a", 2), ("b", 3))
        )
        yield TwoHosts(bridge=bridge, bridge_ip=f"{subnet}.1", a=a, b=b)
