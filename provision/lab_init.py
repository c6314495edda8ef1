"""PID 1 of a lab host.

Started by ``provision.lab`` inside a host's network namespace and freshly
unshared mount, UTS, IPC and PID namespaces (so this process is PID 1 there).
It builds the host's root filesystem, becomes the host's init and supervises
sshd:

* mounts an overlay root (lower: the machine's ``/``, upper/work: the host's
  directory in the lab dir), binds the folders that must be on the real disk
  (``/var/lib/containerd``, from the host's directory in the lab dir), then
  fresh ``/proc``, ``/sys`` (showing this network namespace), the machine's
  cgroup tree, ``/dev`` with a private ``devpts`` and ``/dev/shm``, tmpfs
  ``/run`` and ``/tmp``, and empty tmpfs over paths the host must not see (the
  lab dir, the operator's state dir);
* writes the per-host files from ``boot.json`` (hostname, hosts, sshd config,
  host key, authorized_keys, machine-id) and sets the hostname;
* makes the new root the root of its mount namespace (pivot_root, then the
  machine's root is detached), with shared propagation below it as on a
  systemd machine, and runs ``sshd -D``, restarting it if it dies;
* reaps orphans, as any PID 1 must;
* on SIGTERM/SIGINT terminates every process of the host, then exits.

Standard library only: it runs with the machine's interpreter before the
chroot, and everything it needs is imported before the root changes.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

HANDLED_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
SSHD_RESTART_MIN = 1.0
SSHD_RESTART_MAX = 10.0
SHUTDOWN_GRACE = 3.0
MNT_DETACH = 2  # umount2 flag (linux/fs.h)


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} lab-init: {message}", file=sys.stderr, flush=True)


def unblock_signals() -> None:
    """Children must not inherit the supervisor's blocked signal mask."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def run(argv: list[str]) -> None:
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=unblock_signals,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()}"
        )


def mount(source: str, target: str, fstype: str | None = None, options: str | None = None,
          flags: tuple[str, ...] = ()) -> None:
    os.makedirs(target, exist_ok=True)
    argv = ["mount", *flags]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", options]
    run(argv + [source, target])


def inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def write_file(root: str, path: str, content: str, mode: int, dir_mode: int = 0o755) -> None:
    """Write a file through the overlay (so it lands in the host's upper dir)."""
    target = inside(root, path)
    parent = os.path.dirname(target)
    os.makedirs(parent, mode=dir_mode, exist_ok=True)
    if dir_mode != 0o755:  # e.g. ~/.ssh, which sshd insists be private
        os.chmod(parent, dir_mode)
    tmp = f"{target}.lab-init.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content.encode())
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    # Replacing (rather than rewriting) also copes with symlinks and whiteouts.
    os.replace(tmp, target)


def enter_root(root: str) -> None:
    """Make `root` the root of this mount namespace, as container runtimes do, and
    detach the machine's root from it.

    A chroot would not do: a container runtime in the host enters its containers'
    mount namespaces with setns, which puts the entering process (`kubectl exec`, exec
    probes) at the root of that namespace; under a chroot that is still the machine's
    root, and the process would run outside its container.
    """
    os.chdir(root)
    # pivot_root(2) moves every process whose root is the old root, this one included.
    run(["pivot_root", ".", "."])
    # The old root is now stacked on the new one: detach it, so nothing of the
    # machine's tree is reachable but through the overlay.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(b".", MNT_DETACH) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"umount2 of the old root: {os.strerror(errno)}")
    os.chdir("/")
    # Shared propagation inside the host, as systemd sets it up on a real machine: a
    # container runtime relies on it for volume mounts with mountPropagation. The peer
    # groups are new ones of this mount namespace, so nothing reaches the machine.
    run(["mount", "--make-rshared", "/"])


def unlock_root(root: str) -> None:
    """sshd (without PAM) refuses every login, keys included, for an account whose
    password is locked with '!'. Keep the host's root usable by key only."""
    shadow = inside(root, "/etc/shadow")
    try:
        with open(shadow) as handle:
            lines = handle.read().splitlines(keepends=True)
    except FileNotFoundError:
        return
    changed = False
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1 and fields[1].startswith("!"):
            fields[1] = "*"
            lines[index] = ":".join(fields)
            changed = True
    if changed:
        original = os.stat(shadow)
        write_file(root, "/etc/shadow", "".join(lines), original.st_mode & 0o7777)
        os.chown(shadow, original.st_uid, original.st_gid)  # root:shadow on Debian


def build_root(boot: dict) -> str:
    base = boot["root"]
    upper, work, merged = (os.path.join(base, d) for d in ("upper", "work", "merged"))

    # Nothing mounted from here on may leak back into the machine's namespace.
    run(["mount", "--make-rprivate", "/"])
    mount("overlay", merged, "overlay", f"lowerdir=/,upperdir={upper},workdir={work}")
    # Folders that must live on the machine's real disk rather than on the overlay
    # (containerd's overlayfs snapshotter cannot stack its layers on an overlay). Their
    # sources sit in the lab dir, so they are bound before the lab dir is hidden below.
    for bind in boot.get("binds", []):
        os.makedirs(bind["source"], mode=0o711, exist_ok=True)
        mount(bind["source"], inside(merged, bind["target"]), flags=("--bind",))

    mount("proc", inside(merged, "/proc"), "proc", "nosuid,nodev,noexec")
    # A sysfs mounted from inside the network namespace shows that namespace's
    # interfaces (/sys/class/net has lo and eth0 only).
    mount("sysfs", inside(merged, "/sys"), "sysfs", "nosuid,nodev,noexec")
    # The machine's cgroup tree (v1, hybrid or v2), so a container runtime works.
    if os.path.ismount("/sys/fs/cgroup"):
        mount("/sys/fs/cgroup", inside(merged, "/sys/fs/cgroup"), flags=("--rbind",))
    mount("/dev", inside(merged, "/dev"), flags=("--rbind",))
    # A private devpts instance: opening /dev/ptmx resolves to the sibling
    # /dev/pts, so ptys allocated by sshd live in (and stay within) this host.
    mount("devpts", inside(merged, "/dev/pts"), "devpts",
          "newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec")
    mount("shm", inside(merged, "/dev/shm"), "tmpfs", "nosuid,nodev,mode=1777")
    mount("tmpfs", inside(merged, "/run"), "tmpfs", "nosuid,nodev,mode=0755")
    mount("tmpfs", inside(merged, "/tmp"), "tmpfs", "nosuid,nodev,mode=1777")
    for path in boot.get("hide", []):
        mount("tmpfs", inside(merged, path), "tmpfs", "nosuid,nodev,noexec,mode=0700,size=1m")
    for directory in ("/run/sshd", "/run/lock"):
        os.makedirs(inside(merged, directory), mode=0o755, exist_ok=True)
    os.chmod(inside(merged, "/run/lock"), 0o1777)

    for entry in boot.get("files", []):
        write_file(merged, entry["path"], entry["content"], entry["mode"],
                   entry.get("dir_mode", 0o755))
    unlock_root(merged)
    return merged


class Supervisor:
    def __init__(self, sshd_argv: list[str]):
        self.sshd_argv = sshd_argv
        self.sshd_pid: int | None = None
        self.sshd_started = 0.0
        self.restart_at = 0.0
        self.backoff = SSHD_RESTART_MIN

    def start_sshd(self) -> None:
        # posix_spawn rather than subprocess: all children are reaped by the
        # waitpid(-1) loop below, so no Popen object may wait on its own.
        try:
            self.sshd_pid = os.posix_spawn(
                self.sshd_argv[0],
                self.sshd_argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)],
                setsigmask=(),
                setsigdef=HANDLED_SIGNALS,
            )
        except OSError as exc:
            log(f"cannot start sshd: {exc}")
            self.schedule_restart()
            return
        self.sshd_started = time.monotonic()
        log(f"sshd started (pid {self.sshd_pid})")

    def schedule_restart(self) -> None:
        self.sshd_pid = None
        self.restart_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, SSHD_RESTART_MAX)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.sshd_pid:
                log(f"sshd exited ({describe(status)}); restarting")
                self.schedule_restart()

    def run(self) -> int:
        self.start_sshd()
        while True:
            info = signal.sigtimedwait(HANDLED_SIGNALS, 1.0)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return self.shutdown(info.si_signo)
            if info is not None and info.si_signo == signal.SIGHUP and self.sshd_pid:
                os.kill(self.sshd_pid, signal.SIGHUP)
            self.reap()
            now = time.monotonic()
            if self.sshd_pid is None and now >= self.restart_at:
                self.start_sshd()
            elif self.sshd_pid is not None and now - self.sshd_started > 60:
                self.backoff = SSHD_RESTART_MIN  # it has been stable for a while

    def shutdown(self, signo: int) -> int:
        log(f"received {signal.Signals(signo).name}; stopping all processes")
        for sig, grace in ((signal.SIGTERM, SHUTDOWN_GRACE), (signal.SIGKILL, 2.0)):
            try:
                # From PID 1, pid -1 means every other process in this namespace.
                os.kill(-1, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    log("all processes stopped")
                    return 0
                if pid == 0:
                    time.sleep(0.05)
        log("processes left after SIGKILL; exiting anyway")
        return 0


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="init process of a kubesmith lab host")
    parser.add_argument("--lab-dir", required=True)
    parser.add_argument("--host", required=True)
    args = parser.parse_args(argv)

    # Signals are consumed synchronously with sigtimedwait. A PID 1 only gets
    # signals it has handlers for, so install (unused) handlers as well.
    for signo in HANDLED_SIGNALS:
        signal.signal(signo, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)

    host_dir = os.path.join(args.lab_dir, "hosts", args.host)
    # /proc is still the machine's here, so /proc/self is our pid as the machine
    # sees it: that is the pid `down` and `status` work with.
    machine_pid = int(os.readlink("/proc/self"))
    with open(os.path.join(host_dir, "init.pid"), "w") as handle:
        handle.write(f"{machine_pid}\n")

    try:
        with open(os.path.join(host_dir, "boot.json")) as handle:
            boot = json.load(handle)
        log(f"starting host {boot['hostname']} ({boot['address']}), pid {machine_pid}")
        root = build_root(boot)
        socket.sethostname(boot["hostname"])
        enter_root(root)
    except Exception as exc:  # report and exit; the lab CLI shows this log
        log(f"host setup failed: {exc}")
        return 1

    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "LANG": "C.UTF-8"})
    return Supervisor(boot["sshd"]).run()


if __name__ == "__main__":
    sys.exit(main())
