"""How the master takes the end of a child it reaped.

Every end is logged in gunicorn's words.  A child that could not boot
(gunicorn's WORKER_BOOT_ERROR) or load the application (APP_LOAD_ERROR)
halts the master at once instead of being respawned forever, and so does a
pool whose children keep exiting with an error right after they start (a
crash loop): respawning cannot fix either, and a halted master with the
error above its exit is what a user can act on.

A child that could not attach the bus (``BUS_UNAVAILABLE``: /dev/shm full,
the bus lock held by a stopped process, no free slot) halts the master only
while its pool never booted: once the deployment served, that is a passing
condition, and halting would close every WebSocket of the other children.
The pool is then respawned after a growing delay (``retry_after``) instead.
"""

import os
import signal
import time

NAMES = {"protocol": "protocol server", "worker": "worker"}
#: a child that exits with an error this soon after it was forked failed to
#: start; this many such failures of one pool within CRASH_WINDOW halt the
#: master (gunicorn's boot-error exit codes halt it at the first one)
FAST_FAILURE = 5.0
CRASH_LOOP = 5
CRASH_WINDOW = 60.0
#: the exit status of a child that could not attach the bus (gunicorn's own
#: are 3, WORKER_BOOT_ERROR, and 4, APP_LOAD_ERROR)
BUS_UNAVAILABLE = 5
#: seconds before the next try after consecutive attach failures: 1, 2, 4 ... 30
ATTACH_BACKOFF_MAX = 30.0


class ChildExits:
    def __init__(self, *, boot_error, app_load_error):
        self.boot_error = boot_error
        self.app_load_error = app_load_error
        self._failures = {}  # kind -> monotonic times of recent fast failures
        self.booted = set()  # kinds whose pool has had a child up since the master started
        self.retry_after = {}  # kind -> monotonic time before which the pool is not respawned
        self._attach_failures = {}  # kind -> consecutive attach failures

    def child_up(self, kind):
        """A child of ``kind`` booted: the pool works, and attach failures start over."""
        self.booted.add(kind)
        self._attach_failures.pop(kind, None)
        self.retry_after.pop(kind, None)

    def may_spawn(self, kind):
        return time.monotonic() >= self.retry_after.get(kind, 0.0)

    def judge(self, log, pid, worker, status):
        """Log a reaped child's end; (reason, exit status) if the master must halt."""
        name = NAMES.get(worker.kind, "worker")
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                sig_name = signal.Signals(sig).name
            except ValueError:
                sig_name = f"signal {sig}"
            if sig == signal.SIGKILL and not worker.retiring and not worker.aborted:
                log.error("%s (pid:%s) was sent %s! Perhaps out of memory?", name.capitalize(), pid, sig_name)
            elif sig in (signal.SIGTERM, signal.SIGKILL):
                log.info("%s (pid:%s) was sent %s", name.capitalize(), pid, sig_name)
            else:
                log.warning("%s (pid:%s) was sent %s!", name.capitalize(), pid, sig_name)
            return None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if not code:
            return None
        log.error("%s (pid:%s) exited with code %s.", name.capitalize(), pid, code)
        if code == self.boot_error:
            return (f"a {name} (pid {pid}) failed to boot (exit code {code}); see its error above. "
                    f"Not restarting it: fix the error, then start again.", self.boot_error)
        if code == BUS_UNAVAILABLE:
            if worker.kind not in self.booted:
                return (f"a {name} (pid {pid}) could not attach the bus (exit code {code}) and none has booted "
                        f"yet; see its error above. Not restarting it: fix the error, then start again.",
                        self.boot_error)
            n = self._attach_failures[worker.kind] = self._attach_failures.get(worker.kind, 0) + 1
            delay = min(ATTACH_BACKOFF_MAX, 2.0 ** (n - 1))
            self.retry_after[worker.kind] = time.monotonic() + delay
            log.warning("%s (pid:%s) could not attach the bus; the others keep serving, next try in %.0f s",
                        name.capitalize(), pid, delay)
            return None
        if code == self.app_load_error:
            return (f"a {name} (pid {pid}) could not load the application (exit code {code}); see its error above. "
                    f"Not restarting it: fix the error, then start again.", self.app_load_error)
        now = time.monotonic()
        if not worker.retiring and now - getattr(worker, "spawned", now) < FAST_FAILURE:
            recent = [t for t in self._failures.get(worker.kind, ()) if now - t < CRASH_WINDOW] + [now]
            self._failures[worker.kind] = recent
            if len(recent) >= CRASH_LOOP:
                return (f"{len(recent)} {name}s exited with an error within {FAST_FAILURE:.0f} s of starting "
                        f"(the last: pid {pid}, exit code {code}); see the errors above. "
                        f"Not restarting them again.", self.boot_error)
        return None
