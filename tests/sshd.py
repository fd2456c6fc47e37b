"""A real OpenSSH server on 127.0.0.1 for the device tests: throwaway host and client keys, a client ssh_config.

Hosts in the client config (use as ``ssh://USER@ALIAS``): ``edgeprune-test`` (our key, known host key),
``edgeprune-stranger`` (a key the server does not accept), ``edgeprune-unknown`` (empty known_hosts). The "device"
is this machine, so its agent Python is this interpreter (``sys.executable``).
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class Sshd:
    user: str
    port: int
    config: Path  # client ssh_config, for $EDGEPRUNE_SSH_CONFIG
    workdir: Path  # edgeprune's work folder on the "device"

    def url(self, alias: str = "edgeprune-test") -> str:
        return f"ssh://{self.user}@{alias}"


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeprune-test", "-f", str(path)],
                   check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not SSHD.is_file() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.fail("the device tests need OpenSSH (/usr/sbin/sshd, ssh, ssh-keygen): `make setup` installs "
                    "openssh-server and openssh-client from Debian")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client", "stranger"):
        _keygen(root / name)
    (root / "authorized_keys").write_text((root / "client.pub").read_text())
    port = _free_port()
    (root / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root / 'host'}
AuthorizedKeysFile {root / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {root / 'sshd.pid'}
""")
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {(root / 'host.pub').read_text()}")
    (root / "empty_known_hosts").write_text("")
    block = ("Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
             "  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n")
    (root / "ssh_config").write_text("".join(
        block.format(alias=alias, port=port, key=root / key, known=root / known)
        for alias, key, known in (("edgeprune-test", "client", "known_hosts"),
                                  ("edgeprune-stranger", "stranger", "known_hosts"),
                                  ("edgeprune-unknown", "client", "empty_known_hosts"))
    ) + "Host *\n  GlobalKnownHostsFile /dev/null\n  UserKnownHostsFile /dev/null\n  IdentitiesOnly yes\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    log = (root / "sshd.log").open("w")
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {(root / 'sshd.log').read_text()[-500:]}")
                time.sleep(0.05)
        yield Sshd(getpass.getuser(), port, root / "ssh_config", root / "device-work")
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture
def device_env(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Sshd:
    """Point edgeprune's ssh at the test server's client config and its device work folder at a temp folder."""
    monkeypatch.setenv("EDGEPRUNE_SSH_CONFIG", str(sshd.config))
    monkeypatch.setenv("EDGEPRUNE_DEVICE_WORKDIR", str(sshd.workdir))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return sshd
