"""Runs one untrusted program inside the sandbox's child process.

Started by ``humaneval.check_completion`` as ``python -I _sandbox_child.py
PROGRAM CPU_SECONDS MEMORY_BYTES FILE_BYTES`` in a throwaway directory, under resource limits and (where the
system allows) in a network namespace of its own. Before the program runs,
this guard removes what a test program has no business doing: sockets,
starting processes, and writing files outside the working directory. Those
Python-level guards are a second layer, not the boundary: the boundary is
the separate process, its limits, its namespace and its time limit.

The parent sends a one-time token on stdin; the last stderr line
``__sandbox_result__ <token> <outcome>`` says how the program ended, and
only ``passed`` after a clean exit counts: a program that leaves early
(``sys.exit(0)``, ``os._exit(0)``) before its tests have run has failed.
"""

import builtins
import faulthandler
import os
import sys

MARKER = "__sandbox_result__"


def _refuse(what):
    def refused(*args, **kwargs):
        raise PermissionError(f"sandbox: {what} is not allowed")

    return refused


def _inside(path, root):
    if isinstance(path, int):
        return True  # an already-open descriptor
    full = os.path.realpath(os.path.join(root, os.fsdecode(path)))
    return full == root or full.startswith(root + os.sep)


def install_guard(root):
    import socket
    import subprocess
    import shutil

    import _socket

    for module in (socket, _socket):
        for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
            if hasattr(module, name):
                setattr(module, name, _refuse(f"{module.__name__}.{name}"))
    subprocess.Popen = _refuse("subprocess")
    for name in ("system", "popen", "fork", "forkpty", "execv", "execve", "execvp",
                 "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv",
                 "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
                 "kill", "killpg", "putenv", "setuid", "chroot", "fchdir", "chdir"):
        if hasattr(os, name):
            setattr(os, name, _refuse(f"os.{name}"))

    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not _inside(file, root):
            raise PermissionError(f"sandbox: writing {file!r} outside the working directory")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not _inside(path, root):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_path_function(name, function):
        def guarded(*paths, **kwargs):
            for path in paths:
                if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path, root):
                    raise PermissionError(f"sandbox: {name} of {path!r} outside the working directory")
            return function(*paths, **kwargs)

        return guarded

    builtins.open = guarded_open
    import io

    io.open = guarded_open
    os.open = guarded_os_open
    for name in ("remove", "unlink", "rmdir", "rename", "replace", "mkdir", "makedirs",
                 "symlink", "link", "truncate", "chmod", "chown", "utime", "removedirs"):
        if hasattr(os, name):
            setattr(os, name, guarded_path_function(f"os.{name}", getattr(os, name)))
    shutil.rmtree = guarded_path_function("shutil.rmtree", shutil.rmtree)
    shutil.move = guarded_path_function("shutil.move", shutil.move)


def limit_resources(cpu_seconds, memory_bytes, file_bytes):
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main():
    program_path = sys.argv[1]
    token = sys.stdin.readline().strip()
    sys.stdin.close()
    limit_resources(*(int(value) for value in sys.argv[2:5]))

    def report(outcome):
        print(f"\n{MARKER} {token} {outcome}", file=sys.stderr, flush=True)
    root = os.path.realpath(os.getcwd())
    with open(program_path) as f:
        source = f.read()
    faulthandler.disable()
    install_guard(root)
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except SystemExit as error:
        report(f"failed: exit({error.code!r})")
        return 1
    except MemoryError:
        report("failed: out of memory")
        return 1
    except BaseException as error:  # the program's failure, reported
        message = str(error).splitlines()[0][:120] if str(error) else ""
        report("failed: " + type(error).__name__ + (f": {message}" if message else ""))
        return 1
    report("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
