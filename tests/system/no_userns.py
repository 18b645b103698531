#!/usr/bin/env python3
"""Run a command as uid and gid 65534 on what looks like a host without
user namespaces: inside a user namespace (the host's uids 0..65535 mapped
as they are) whose user.max_user_namespaces is 0, so the command can create
none. Exits with the command's status. Needs root."""
import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: no_userns.py COMMAND [ARG...]")
    libc = ctypes.CDLL(None, use_errno=True)
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_child_w)
        os.close(to_parent_r)
        if libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(125)
        os.write(to_parent_w, b"u")
        if os.read(to_child_r, 1) != b"m":
            os._exit(125)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        os.execvp(sys.argv[1], sys.argv[1:])
    os.close(to_child_r)
    os.close(to_parent_w)
    if os.read(to_parent_r, 1) != b"u":
        sys.exit("no_userns.py: the child could not unshare its user namespace")
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write("0 0 65536\n")
    os.write(to_child_w, b"m")
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
