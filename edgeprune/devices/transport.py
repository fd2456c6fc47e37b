"""Devices: where a model runs — this machine (``local``) or a board reached over SSH (``ssh://user@host[:port]``).

A device offers four things: run a command (an argv list), put a file there, get a file back, and say what it is
(its facts). SSH goes through the system OpenSSH client, so the user's keys, ``~/.ssh/config`` and known_hosts
apply as they do for ``ssh`` itself; host keys are checked strictly and nothing ever prompts (BatchMode). Remote
commands are argv lists joined with :func:`shlex.join`, so no host name, path or task name reaches a shell
unquoted. Files travel through ``ssh … cat`` (one quoting rule for every remote path, no sftp batch language) and
land under a temporary name that is renamed when complete, so an interrupted transfer never leaves a file that a
later run would trust.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Protocol

from edgeprune.core.hashing import sha256_file
from edgeprune.core.targets import PYTHON_NAME, SSH_URL
from edgeprune.devices import probe

#: An ssh_config file given to every ``ssh`` call with ``-F`` (users normally rely on ``~/.ssh/config``).
SSH_CONFIG_ENV = "EDGEPRUNE_SSH_CONFIG"
#: Where edgeprune keeps pushed models, builds and timing caches on a device (relative: under the home folder).
WORKDIR_ENV = "EDGEPRUNE_DEVICE_WORKDIR"
DEFAULT_WORKDIR = ".cache/edgeprune"
#: The Python that runs edgeprune's agent on a remote device unless the target's ``agent_python`` says otherwise.
DEFAULT_PYTHON = "python3"
CONNECT_TIMEOUT_S = 10


class DeviceError(RuntimeError):
    """A device cannot be reached or a command on it failed; the message is one line saying why and what to do."""


def check_python(python: str) -> str:
    """The agent's Python must be an absolute path or a bare command name of safe characters (it is run there)."""
    if not PYTHON_NAME.match(python):
        raise DeviceError(f"agent python {python!r}: give an absolute path (/home/me/venv/bin/python) or a bare "
                          "command name (python3)")
    return python


def safe_name(name: str) -> str:
    """A name usable as one path component anywhere: characters other than word characters, '.' and '-' become '_'."""
    cleaned = re.sub(r"[^\w.-]", "_", name).lstrip(".-")
    return cleaned or "_"


class Device(Protocol):
    """What edgeprune needs from a machine that runs models."""

    url: str
    local: bool
    python: str  # the Python that runs ``-m edgeprune.agent`` there

    def run(self, argv: list[str], timeout: float | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` there; the result carries its exit status, stdout and stderr. A timeout raises
        :class:`subprocess.TimeoutExpired`; a device that cannot be reached raises :class:`DeviceError`."""
        ...

    def put(self, local: Path, remote: str) -> None:
        """Copy a local file there, creating folders; the file appears complete or not at all."""
        ...

    def get(self, remote: str, local: Path) -> None:
        """Copy a file from there to ``local``; the local file appears complete or not at all."""
        ...

    def exists(self, remote: str) -> bool: ...

    def path(self, remote: str) -> str:
        """A path on the device: absolute as given; relative (or ``~/…``) under the home folder there."""
        ...

    def facts(self) -> dict[str, Any]:
        """Model, L4T/JetPack, TensorRT, power mode, clocks, versions (see :func:`edgeprune.devices.probe.facts`)."""
        ...


def workdir(device: Device) -> str:
    """edgeprune's folder on ``device``: ``$EDGEPRUNE_DEVICE_WORKDIR``, else ``~/.cache/edgeprune``."""
    return device.path(os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR)


class LocalDevice:
    """This machine: commands run as child processes, files are copied."""

    url = "local"
    local = True

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self._facts: dict[str, Any] | None = None

    def run(self, argv: list[str], timeout: float | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, check=False)

    def put(self, local: Path, remote: str) -> None:
        _copy(local, Path(self.path(remote)))

    def get(self, remote: str, local: Path) -> None:
        _copy(Path(self.path(remote)), local)

    def exists(self, remote: str) -> bool:
        return Path(self.path(remote)).is_file()

    def path(self, remote: str) -> str:
        path = Path(remote).expanduser()
        return str(path if path.is_absolute() else Path.home() / path)

    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            self._facts = probe.facts()
        return self._facts


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


class SshDevice:
    """A machine reached with the system ``ssh``: keys only (BatchMode), host keys checked strictly."""

    local = False

    def __init__(self, user: str, host: str, port: int | None = None, python: str | None = None) -> None:
        self.user, self.host, self.port = user, host, port
        self.url = f"ssh://{user}@{host}" + (f":{port}" if port else "")
        self.python = check_python(python or DEFAULT_PYTHON)
        self._facts: dict[str, Any] | None = None

    def _argv(self, remote_command: str) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                   "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        config = os.environ.get(SSH_CONFIG_ENV)
        if config:
            if not Path(config).is_file():
                raise DeviceError(f"${SSH_CONFIG_ENV} names {config}, which is not a file")
            options = ["-F", config, *options]
        if self.port:
            options += ["-p", str(self.port)]
        return ["ssh", *options, "--", f"{self.user}@{self.host}", remote_command]

    def _ssh(self, remote_command: str, timeout: float | None, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        try:
            done = subprocess.run(self._argv(remote_command), timeout=timeout, check=False, **kwargs)
        except FileNotFoundError:
            raise DeviceError("the OpenSSH client (ssh) is not installed here: install openssh-client") from None
        if done.returncode == 255:
            stderr = done.stderr if isinstance(done.stderr, str) else done.stderr.decode(errors="replace")
            if message := self._connection_error(stderr):
                raise DeviceError(message)
        return done

    def _connection_error(self, stderr: str) -> str | None:
        """ssh's own failures (exit 255) as one line saying what to do; None when the remote command said 255."""
        lines = [line.strip() for line in stderr.replace("\r", "").splitlines() if line.strip()]
        text = " ".join(lines)
        where = f"{self.host}" + (f" -p {self.port}" if self.port else "")
        if "IDENTIFICATION HAS CHANGED" in text:
            return (f"{self.url}: the host key of {self.host} has CHANGED since it was added to known_hosts (a reflashed "
                    f"board, or someone in between): check its fingerprint on the board, then ssh-keygen -R {self.host} "
                    f"and ssh-keyscan {where} >> ~/.ssh/known_hosts")
        if "Host key verification failed" in text or "host key is known" in text:
            return (f"{self.url}: the host key of {self.host} is not in known_hosts: add it with ssh-keyscan {where} "
                    ">> ~/.ssh/known_hosts after checking its fingerprint on the board (ssh-keygen -lf "
                    "/etc/ssh/ssh_host_ed25519_key.pub)")
        if "Permission denied" in text or "Too many authentication failures" in text:
            return (f"{self.url}: {self.host} refused our SSH key for user {self.user}: install your public key there "
                    f"(ssh-copy-id {self.user}@{self.host}); edgeprune never uses passwords")
        if "Could not resolve hostname" in text:
            return f"{self.url}: cannot resolve host name {self.host!r}"
        for reason in ("Connection refused", "Connection timed out", "No route to host", "Network is unreachable",
                       "Connection closed", "Connection reset", "kex_exchange_identification"):
            if reason in text:
                port = self.port or "22 (or your ssh config's)"
                return f"{self.url}: cannot connect to {self.host} port {port}: {reason}"
        if lines and lines[-1].startswith("ssh:"):
            return f"{self.url}: {lines[-1]}"
        return None

    def run(self, argv: list[str], timeout: float | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = self._ssh(shlex.join(argv), timeout, capture_output=True, text=True, input=input)
        return subprocess.CompletedProcess(argv, done.returncode, done.stdout, done.stderr)

    def put(self, local: Path, remote: str, timeout: float | None = 600) -> None:
        target = self.path(remote)
        folder = target.rsplit("/", 1)[0] if "/" in target else "."
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.part"
        # cat ends at EOF even when the connection drops mid-way: the checksum, not cat's exit, says it all arrived
        digest = sha256_file(local)
        command = (f"{shlex.join(['mkdir', '-p', '--', folder])} && cat > {shlex.quote(tmp)} && "
                   f"{{ [ \"$(sha256sum < {shlex.quote(tmp)} | cut -c1-64)\" = {digest} ] || "
                   f"{{ rm -f -- {shlex.quote(tmp)}; exit 3; }}; }} && {shlex.join(['mv', '-f', '--', tmp, target])} "
                   f"|| {{ rm -f -- {shlex.quote(tmp)}; exit 1; }}")
        with local.open("rb") as source:
            try:
                done = self._ssh(command, timeout, stdin=source, capture_output=True)
            except subprocess.TimeoutExpired:
                raise DeviceError(f"{self.url}: upload of {local.name} to {target} was interrupted after {timeout:g} s; "
                                  "nothing was replaced") from None
        if done.returncode == 3:
            raise DeviceError(f"{self.url}: upload of {local.name} to {target} arrived incomplete or corrupted "
                              "(sha256 differs); nothing was replaced")
        if done.returncode != 0:
            raise DeviceError(f"{self.url}: upload of {local.name} to {target} failed: {_last(done.stderr)}")

    def get(self, remote: str, local: Path, timeout: float | None = 600) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=local.parent, prefix=f".{local.name}.", suffix=".part",
                                         delete=False) as sink:
            tmp = Path(sink.name)
            try:
                done = self._ssh(shlex.join(["cat", "--", self.path(remote)]), timeout, stdout=sink,
                                 stderr=subprocess.PIPE)
            except subprocess.TimeoutExpired:
                tmp.unlink(missing_ok=True)
                raise DeviceError(f"{self.url}: download of {remote} was interrupted after {timeout:g} s") from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise DeviceError(f"{self.url}: download of {remote} failed: {_last(done.stderr)}")
        tmp.replace(local)

    def exists(self, remote: str) -> bool:
        return self.run(["test", "-f", self.path(remote)], timeout=60).returncode == 0

    def path(self, remote: str) -> str:
        # ssh runs commands in the home folder, so a relative path is already under it; '~' would be quoted literally
        return remote.removeprefix("~/")

    def facts(self) -> dict[str, Any]:
        """:mod:`edgeprune.devices.probe` run from its source fed on stdin: needs only a Python there, not edgeprune."""
        if self._facts is None:
            import json

            source = importlib.resources.files("edgeprune.devices").joinpath("probe.py").read_text()
            done = self.run([self.python, "-"], timeout=120, input=source)
            if done.returncode != 0:
                raise DeviceError(command_error(self, [self.python, "facts"], done))
            self._facts = json.loads(done.stdout)
        return self._facts


def _last(stderr: str | bytes) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.replace("\r", "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


def command_error(device: Device, argv: list[str], done: subprocess.CompletedProcess[str]) -> str:
    """One line for a command that failed on a device: a missing program, a missing agent, or its last stderr line."""
    what = " ".join(argv[:4])
    if done.returncode == 127:
        return f"{device.url}: {argv[0]} not found there (exit 127)"
    if "No module named edgeprune" in done.stderr or "No module named 'edgeprune'" in done.stderr:
        return (f"{device.url}: edgeprune's agent is not installed for {device.python} there: install edgeprune in a "
                "venv on the device and set the target's agent_python (or --agent-python) to that venv's python")
    return f"{device.url}: {what} failed (exit {done.returncode}): {_last(done.stderr)}"


def run_agent(device: Device, command: str, *args: str, timeout: float | None = 600,
              input: str | None = None) -> dict[str, Any]:
    """Run ``python -m edgeprune.agent COMMAND ARGS…`` on the device and return the JSON it prints."""
    import json

    argv = [device.python, "-m", "edgeprune.agent", command, *args]
    done = device.run(argv, timeout=timeout, input=input)
    if done.returncode != 0:
        raise DeviceError(command_error(device, argv, done))
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise DeviceError(f"{device.url}: the agent's {command} printed no JSON: {_last(done.stdout)}") from None


def open_device(url: str, python: str | None = None) -> Device:
    """``local`` or ``ssh://user@host[:port]``; anything else is a one-line error."""
    if url == "local":
        return LocalDevice(python)
    m = SSH_URL.match(url)
    if not m:
        raise DeviceError(f"device {url!r}: expected 'local' or 'ssh://user@host[:port]'")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise DeviceError(f"device {url!r}: port {port} is not between 1 and 65535")
    return SshDevice(m["user"], m["host"], port, python)
