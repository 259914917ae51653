"""How the master takes the end of a child it reaped.

Every end is logged in gunicorn's words.  A child that could not boot
(gunicorn's WORKER_BOOT_ERROR) or load the application (APP_LOAD_ERROR)
halts the master at once instead of being respawned forever, and so does a
pool whose children keep exiting with an error right after they start (a
crash loop): respawning cannot fix either, and a halted master with the
error above its exit is what a user can act on.
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


class ChildExits:
    def __init__(self, *, boot_error, app_load_error):
        self.boot_error = boot_error
        self.app_load_error = app_load_error
        self._failures = {}  # kind -> monotonic times of recent fast failures

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
