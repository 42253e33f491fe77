"""Progress on stderr for long runs: a rich bar (rich ships with Keras) on a
terminal, otherwise a line at most every ``LOG_EVERY_S`` seconds, so that a
run in the background (``nohup ... 2> log``) can be followed."""

import contextlib
import sys
import time

LOG_EVERY_S = 30.0


@contextlib.contextmanager
def bar(total, description):
    """Yields ``advance(n)``, to be called as items complete."""
    if not sys.stderr.isatty():
        start, done = time.monotonic(), [0]
        last = [start]

        def log(n=1):
            done[0] += n
            now = time.monotonic()
            if now - last[0] >= LOG_EVERY_S or done[0] == total:
                last[0] = now
                print(f"{description}: {done[0]}/{total} ({now - start:.0f} s)",
                      file=sys.stderr, flush=True)

        yield log
        return
    from rich.console import Console
    from rich.progress import BarColumn
    from rich.progress import MofNCompleteColumn
    from rich.progress import Progress
    from rich.progress import TextColumn
    from rich.progress import TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
