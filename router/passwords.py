"""Passwords, off the router's loop: argon2id hashes made and checked by a pool of threads.

``Passwords`` hashes and verifies with argon2-cffi (argon2id, OWASP's minimum: 19 MiB, two
passes, one lane; about 20 ms of one core here). argon2's C code runs without the GIL, so a
thread pool keeps the router's loop free while it works (measured: the loop's longest gap 1.7 ms
while a thread hashes without pause). With a pepper (``--password-pepper-file``), what is hashed
is HMAC-SHA256(pepper, password): a stolen accounts file is useless without the pepper, which
lives elsewhere. argon2's verify compares in constant time; an unknown name is checked against
a dummy hash, so it costs what a wrong password costs and answers the same.

``Jobs`` runs a function in the pool and hands its result back *on the loop's thread*: the
loop calls ``drain`` (the router does at the end of each turn, and the pool wakes it with
``on_done`` when a job finishes). At most ``limit`` jobs wait or run: one more is refused (the
client is told to try again), so a flood of logins costs a bounded queue, never memory or
unbounded CPU. ``InlineJobs`` runs each job at once on the caller's thread (tests of the state).

argon2 (with cffi), hashlib and hmac (libcrypto) and the pool's threads cost an idle router
about 8 MB (issue 18): they come at the first password hashed or checked (the hasher, made
then) and the first job submitted (the pool), not at start.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from argon2 import PasswordHasher

TIME_COST, MEMORY_KIB, LANES = 2, 19_456, 1  # OWASP's argon2id minimum
class Passwords:
    def __init__(self, pepper: bytes = b"", *, time_cost: int = TIME_COST,
                 memory_kib: int = MEMORY_KIB, lanes: int = LANES):
        self.pepper = pepper
        self._costs = (time_cost, memory_kib, lanes)
        self._made: PasswordHasher | None = None  # at the first use: see the module's docstring
        self._dummy: str | None = None
        self._lock = threading.Lock()

    @property
    def _hasher(self) -> PasswordHasher:
        if self._made is None:
            with self._lock:  # the pool's threads may come here at once
                if self._made is None:
                    from argon2 import PasswordHasher
                    time_cost, memory_kib, lanes = self._costs
                    self._made = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                                parallelism=lanes)
        return self._made

    def _prepared(self, password: str) -> bytes:
        raw = password.encode("utf-8", "surrogatepass")
        if self.pepper:
            import hashlib
            import hmac
            return hmac.new(self.pepper, raw, hashlib.sha256).hexdigest().encode()
        return raw

    def hash(self, password: str) -> str:
        return self._hasher.hash(self._prepared(password))

    def verify(self, stored: str | None, password: str) -> bool:
        """Does ``password`` match ``stored`` (None: an unknown name, checked against a dummy
        so that it takes as long and fails the same)?"""
        hasher = self._hasher
        if stored is None:
            with self._lock:
                if self._dummy is None:
                    self._dummy = hasher.hash(b"not a password of anyone")
            stored = self._dummy
            password = password + "\x00"  # never matches the dummy's
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
        try:
            return bool(hasher.verify(stored, self._prepared(password)))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def token_digest(token: str) -> str:
    """What the accounts file keeps of a resume token (tokens are long random strings: one
    SHA-256 is enough, and a stolen file gives no token)."""
    import hashlib
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


Then = Callable[[Any], None]


class Jobs:
    def __init__(self, workers: int = 1, limit: int = 64,
                 on_done: Callable[[], None] | None = None):
        self.workers = workers
        self.limit = limit
        self.on_done = on_done
        self.running = 0  # submitted, not drained (loop thread only)
        self.refused = 0
        self._finished: deque[tuple[Then, Any, BaseException | None]] = deque()
        self._pool: ThreadPoolExecutor | None = None  # made at the first job (threads, memory)

    def submit(self, fn: Callable[..., Any], args: tuple, then: Then) -> bool:
        """Run ``fn(*args)`` off the loop; ``then(result)`` runs on the loop at a later
        ``drain``. False (and nothing runs) when ``limit`` jobs are waiting already."""
        if self.running >= self.limit:
            self.refused += 1
            return False
        self.running += 1
        self._start(fn, args, then)
        return True

    def _start(self, fn: Callable[..., Any], args: tuple, then: Then) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                            thread_name_prefix="passwords")
        future = self._pool.submit(fn, *args)

        def finished(f: Future) -> None:
            self._finished.append((then, None if f.exception() else f.result(), f.exception()))
            if self.on_done is not None:
                self.on_done()

        future.add_done_callback(finished)

    @property
    def ready(self) -> bool:
        return bool(self._finished)

    def drain(self) -> int:
        """Run the ``then`` of every finished job, on the caller's (the loop's) thread. A job
        that raised is handed ``None``."""
        n = 0
        finished = self._finished
        while finished:
            then, result, error = finished.popleft()
            self.running -= 1
            n += 1
            then(None if error is not None else result)
        return n

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class InlineJobs(Jobs):
    """Each job runs at ``submit``, on the caller's thread; its ``then`` at the next
    ``drain``, as with the pool (tests)."""

    def __init__(self, limit: int = 64):
        super().__init__(workers=0, limit=limit)

    def _start(self, fn: Callable[..., Any], args: tuple, then: Then) -> None:
        try:
            self._finished.append((then, fn(*args), None))
        except Exception as e:
            self._finished.append((then, None, e))
