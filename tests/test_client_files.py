"""Files in the client core (PROTOCOL Part 5): ``Session.send_file`` (``/upload``, then the PUT
streamed from disk in a thread of its own), ``Session.download`` (the GET streamed to disk,
never over an existing file), the ``FILE:`` lines in ``ChatState`` (numbered, de-duplicated),
against ``pychat serve``. Every wait is for an event, with a timeout.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time

import pytest

from pychat.clients import events, transfer
from pychat.clients.session import Session
from pychat.clients.state import FILE, ChatState
from pychat.wire import replies
from support.procs import start_serve

from .test_client_core import Collector

pytestmark = pytest.mark.e2e


def feed(state: ChatState, *lines: str):
    return [state.apply(replies.parse_server_line(line)) for line in lines]


# ---- pure ----------------------------------------------------------------------------------------

def test_state_numbers_files_renders_them_and_keeps_numbers_through_history():
    st = ChatState()
    feed(st, "ID:111111", "USERS:111111,222222", "NAMES:222222=bob", "OK nick alice")
    line, = feed(st, "@time=2026-11-26T11:00:00.000Z FILE:222222 34200 "
                     "http://h:1/files/AAAAAAAAAAAAAAAAAAAAAA/cat.png cat.png")
    assert line.kind == FILE and line.who == "bob" and line.file is not None
    assert line.file.number == 1 and not line.file.mine
    assert line.text == "sent cat.png (34.2 KB) #1 http://h:1/files/AAAAAAAAAAAAAAAAAAAAAA/cat.png"
    assert line.plain().endswith("] bob sent cat.png (34.2 KB) #1 "
                                 "http://h:1/files/AAAAAAAAAAAAAAAAAAAAAA/cat.png")
    mine, = feed(st, "FILE:111111 5 http://h:1/files/BBBBBBBBBBBBBBBBBBBBBB/a%20b.txt a b.txt")
    assert mine.file.number == 2 and mine.file.mine and mine.file.name == "a b.txt"
    # the same line again (history after a reconnect): not shown twice, same number
    again = feed(st, "HISTORY:1", "@time=2026-11-26T11:00:00.000Z FILE:222222 34200 "
                                  "http://h:1/files/AAAAAAAAAAAAAAAAAAAAAA/cat.png cat.png")
    assert again == [None, None] and len(st.files) == 2
    # in another room's history: shown (history), and still number 1
    _, _, hist = feed(st, "ROOM:#dev", "HISTORY:1", "@time=2026-11-26T11:00:00.000Z "
                      "FILE:222222 34200 http://h:1/files/AAAAAAAAAAAAAAAAAAAAAA/cat.png cat.png")
    assert hist.history and hist.file.number == 1
    assert st.file(1).name == "cat.png" and st.file(2).mine and st.file(3) is None
    assert st.file(0) is None


def test_transfer_events_make_progress_and_one_line():
    st = ChatState()
    assert st.apply(events.TransferProgress(1, events.UPLOAD, "x.bin", 0, 10)) is None
    assert st.apply(events.TransferProgress(1, events.UPLOAD, "x.bin", 5, 10)) is None
    assert st.transfers[1].fraction() == 0.5
    sent = st.apply(events.TransferDone(1, events.UPLOAD, "x.bin", 10, "http://u"))
    assert sent.text == "x.bin sent (10 B)"  # (the FILE: line gives the URL)
    assert not st.transfers
    err = st.apply(events.TransferDone(2, events.UPLOAD, "y.bin", 10, error="too large"))
    assert err.text == "could not send y.bin: too large"
    ok = st.apply(events.TransferDone(3, events.DOWNLOAD, "y.bin", 1500, "http://u", "/t/y.bin"))
    assert ok.text == "saved y.bin (1.5 KB) to /t/y.bin"


def test_names_sizes_and_free_paths(tmp_path):
    assert transfer.upload_name("/a/my holiday\tpic.png") == "my_holiday_pic.png"
    long = transfer.upload_name("x" * 400 + ".jpeg")
    assert len(long) == 255 and long.endswith(".jpeg")
    assert [transfer.human_size(n) for n in (0, 999, 1000, 34_200, 2_000_000, 10**13)] == [
        "0 B", "999 B", "1.0 KB", "34.2 KB", "2.0 MB", "10.0 TB"]
    (tmp_path / "cat.png").write_bytes(b"old")
    p1, fd = transfer.reserve_path(str(tmp_path), "cat.png")
    os.close(fd)
    p2, fd = transfer.reserve_path(str(tmp_path / "cat.png"), "ignored")
    os.close(fd)
    p3, fd = transfer.reserve_path(str(tmp_path), "../../etc/a.tar.gz")
    os.close(fd)
    assert [os.path.basename(p) for p in (p1, p2, p3)] == ["cat-1.png", "cat-2.png", "a.tar.gz"]
    p4, fd = transfer.reserve_path(str(tmp_path), "a.tar.gz")
    os.close(fd)
    assert os.path.basename(p4) == "a-1.tar.gz"
    assert (tmp_path / "cat.png").read_bytes() == b"old"
    p5, fd = transfer.reserve_path(str(tmp_path / "new.bin"), "x")
    os.close(fd)
    assert p5 == str(tmp_path / "new.bin")
    assert transfer.safe_file_name("..\\..\\.bashrc\x07") == "bashrc"
    assert transfer.image_kind("A.JPG") == "JPEG" and transfer.image_kind("a.svg") == ""
    assert transfer.sniff_image(b"RIFF\0\0\0\0WEBPVP8 ") == "WEBP"


def test_send_arguments_and_pasted_files(tmp_path):
    spaced = tmp_path / "my cat.png"
    spaced.write_bytes(b"x")
    assert transfer.split_send(f"{spaced}") == (str(spaced), "")
    assert transfer.split_send(f"{spaced} bob") == (str(spaced), "bob")
    assert transfer.split_send(f"'{spaced}' bob") == (str(spaced), "bob")
    assert transfer.split_send("/no/such file") == ("/no/such file", "")  # (then: no such file)
    uri = "file://" + str(spaced).replace(" ", "%20")
    assert transfer.file_uri_path(uri + "\n") == str(spaced)
    assert transfer.file_uri_path(str(spaced)) == str(spaced)
    assert transfer.file_uri_path("hello there") == ""
    assert transfer.file_uri_path(str(tmp_path)) == ""  # a folder is not a file to send
    assert transfer.file_uri_path("") == ""


# ---- against pychat serve ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files_server(tmp_path_factory):
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--data-dir",
                          str(tmp_path_factory.mktemp("files")), "--files-max-mb", "8")
    yield port
    p.stop()


def session(port: int, sessions: list, name: str, room: str) -> tuple[Session, Collector]:
    got = Collector()
    s = Session("127.0.0.1", port, got, name=name, room=room)
    sessions.append(s.start())
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged) and ev.room == room)
    return s, got


def is_done(tid: int):
    return lambda ev: isinstance(ev, events.TransferDone) and ev.id == tid


def sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def test_send_file_reaches_another_session_and_downloads_identical(files_server, sessions,
                                                                   tmp_path):
    room = f"#f{os.getpid()}"
    alice, a_got = session(files_server, sessions, "alice", room)
    bob, b_got = session(files_server, sessions, "bob", room)
    src = tmp_path / "two mega.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    size = src.stat().st_size
    tid = alice.send_file(str(src))
    done = a_got.wait(is_done(tid), timeout=30)
    assert not done.error, done.error
    assert done.kind == events.UPLOAD and done.size == size and done.name == "two_mega.bin"
    progress = [ev.done for ev in a_got.all
                if isinstance(ev, events.TransferProgress) and ev.id == tid]
    assert progress[0] == 0 and progress[-1] == size
    assert progress == sorted(progress) and len(set(progress)) == len(progress) >= 2
    assert all(ev.total == size for ev in a_got.all
               if isinstance(ev, events.TransferProgress) and ev.id == tid)
    # no UPLOAD: line reached the front: the session took it
    assert not any(isinstance(ev, replies.UploadUrl) for ev in a_got.all)
    shared = b_got.wait(lambda ev: isinstance(ev, replies.FileShared))
    assert (shared.uid, shared.size, shared.url, shared.name) == (
        alice.uid, size, done.url, "two_mega.bin")
    assert any(isinstance(ev, replies.FileShared) and ev.url == done.url for ev in a_got.all) \
        or a_got.wait(lambda ev: isinstance(ev, replies.FileShared) and ev.url == done.url)

    # bob saves it; again into the same folder: a new name, the first file untouched
    out = tmp_path / "downloads"
    out.mkdir()
    first = bob.download(shared.url, str(out), shared.name)
    got1 = b_got.wait(is_done(first), timeout=30)
    assert not got1.error and got1.path == str(out / "two_mega.bin") and got1.size == size
    assert sha(got1.path) == sha(src)
    before = os.stat(got1.path).st_mtime_ns
    second = bob.download(shared.url, str(out), shared.name)
    got2 = b_got.wait(is_done(second), timeout=30)
    assert not got2.error and got2.path == str(out / "two_mega-1.bin")
    assert sha(got2.path) == sha(src) and os.stat(got1.path).st_mtime_ns == before
    down = [ev for ev in b_got.all if isinstance(ev, events.TransferProgress) and ev.id == first]
    assert down[-1].done == size and [ev.done for ev in down] == sorted(ev.done for ev in down)


def test_a_private_file_and_chat_during_an_upload(files_server, sessions, tmp_path, connect):
    room = f"#p{os.getpid()}"
    alice, a_got = session(files_server, sessions, "alice2", room)
    _bob, b_got = session(files_server, sessions, "bob2", room)
    carol = connect(files_server)
    carol.handshake()
    carol.send(f"/join {room}")
    carol.expect_prefix(f"ROOM:{room}")
    src = tmp_path / "note.txt"
    src.write_text("psst\n")
    tid = alice.send_file(str(src), target="bob2")
    alice.send("a line right behind it")  # the upload does not hold the chat up
    done = a_got.wait(is_done(tid))
    assert not done.error, done.error
    shared = b_got.wait(lambda ev: isinstance(ev, replies.FileShared))
    assert shared.name == "note.txt" and shared.url == done.url
    carol.expect(lambda ln: ln.endswith("a line right behind it"))
    carol.send("/ping after")  # nothing of the file reached carol before her pong
    got = carol.expect(lambda ln: ln.startswith(("PONG", "FILE:")))
    assert got == "PONG after"


def test_refusals_and_failures_are_the_result(procs, sessions, tmp_path):
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--files", "memory",
                          "--files-max-mb", "1", acceptors=1)
    procs.append(p)
    alice, got = session(port, sessions, "big", "#big")
    src = tmp_path / "big.iso"
    with open(src, "wb") as f:  # sparse: the /upload is refused before a byte is read
        f.truncate(2 * 1024 * 1024)
    tid = alice.send_file(str(src))
    done = got.wait(is_done(tid))
    assert done.code == "too-large" and "1" in done.error and not done.url
    assert not any(isinstance(ev, replies.Error) for ev in got.all)  # told once, as the result
    tid = alice.send_file(str(tmp_path / "no-such-file"))
    done = got.wait(is_done(tid))
    assert done.error == "No such file or directory" and done.name == "no-such-file"
    tid = alice.send_file(str(tmp_path))
    assert got.wait(is_done(tid)).error
    tid = alice.send_file(str(tmp_path / "big.iso"), target="nobody-like-this")
    assert got.wait(is_done(tid)).code == "no-such-user"
    # a download of a file the server does not have: an error, and no file left behind
    web = next(line for line in p.output if "web http" in line).split("web ")[1].split("/")[2]
    tid = alice.download(f"http://{web}/files/AAAAAAAAAAAAAAAAAAAAAA/x.png", str(tmp_path),
                         "x.png")
    done = got.wait(is_done(tid))
    assert "404" in done.error and not (tmp_path / "x.png").exists()
    # and the chat still goes
    alice.send("/ping still-here")
    got.wait(lambda ev: isinstance(ev, replies.Pong) and ev.token == "still-here")


def test_the_put_streams_from_disk_in_its_own_thread(files_server, sessions, tmp_path,
                                                     monkeypatch):
    """The PUT reads the file chunk by chunk (never whole) on a thread that is not the
    session's: while it is held between two chunks, chat lines go and come back."""
    room = f"#s{os.getpid()}"
    alice, got = session(files_server, sessions, "streamer", room)
    src = tmp_path / "s.bin"
    src.write_bytes(os.urandom(5 * transfer.CHUNK))
    hold, held = threading.Event(), queue.Queue()
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            assert n != -1 and n <= transfer.CHUNK
            reads.append(n)
            if len(reads) == 2:
                held.put(threading.current_thread().name)
                assert hold.wait(20)
            return self.f.read(n)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def spy_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return Spy(f) if str(path) == str(src) and "b" in mode else f

    monkeypatch.setattr(transfer, "open", spy_open, raising=False)
    tid = alice.send_file(str(src))
    thread = held.get(timeout=15)
    assert thread.startswith("pychat-put-")
    t0 = time.monotonic()
    alice.send("while the upload waits")
    got.wait(lambda ev: isinstance(ev, replies.Chat) and ev.text == "while the upload waits")
    assert time.monotonic() - t0 < 5
    hold.set()
    done = got.wait(is_done(tid))
    assert not done.error and done.size == 5 * transfer.CHUNK and len(reads) == 5


def test_over_tls_the_put_and_get_use_the_sessions_context(procs, sessions, tmp_path):
    """``--tls-cert``: the web door is https too; the session's context (``--ca``) checks the
    upload's and the file's URLs; without it (the system's CAs) the certificate is refused."""
    import ssl

    from .test_tls_e2e import make_certificates
    (tmp_path / "tls").mkdir()
    ca, cert, key = make_certificates(tmp_path / "tls")
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--files", "memory",
                          "--tls-cert", cert, "--tls-key", key, acceptors=1)
    procs.append(p)
    got = Collector()
    s = Session("127.0.0.1", port, got, name="sec", room="#tls",
                tls=ssl.create_default_context(cafile=ca))
    sessions.append(s.start())
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged))
    src = tmp_path / "secret.bin"
    src.write_bytes(os.urandom(200_000))
    tid = s.send_file(str(src))
    done = got.wait(is_done(tid))
    assert not done.error, done.error
    assert done.url.startswith("https://127.0.0.1:")
    tid = s.download(done.url, str(tmp_path / "back.bin"), "secret.bin")
    back = got.wait(is_done(tid))
    assert not back.error and sha(back.path) == sha(src)
    with pytest.raises(transfer.TransferError, match="certificate was refused"):
        transfer.download(done.url, str(tmp_path / "nope.bin"), "x", None)
    assert not (tmp_path / "nope.bin").exists()
