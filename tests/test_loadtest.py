"""The load generator: its statistics (pure) and a real run against `pychat serve`."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from itertools import pairwise
from types import SimpleNamespace

import pytest

from pychat.clients.loadstats import Latencies, Summary, percentile, table
from pychat.clients.loadtest import sampled_indices
from support.procs import ROOT, free_port, python_m, start_serve


def test_percentile_nearest_rank():
    values = sorted(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_latencies_summarise_and_keep_a_series_per_second():
    lat = Latencies()
    for i in range(1000):
        lat.add(i // 500, float(i % 100))
    stats = lat.stats()
    assert stats["count"] == 1000 and stats["max"] == 99.0 and stats["p50"] == 49.0
    assert [sec for sec, _, _ in lat.series()] == [0, 1]


def test_table_mentions_loss_and_the_bottleneck_note():
    s = Summary(proto="pychat", clients=10, senders=2, rate=50.0, sent=100, expected=1000,
                delivered=990, lost=10, latency_ms={"count": 0})
    s.notes.append("the load generator used a whole core")
    text = table(s)
    assert "990/1000" in text and re.search(r"lost, duplicated +10, 0", text)
    assert "note: the load generator used a whole core" in text


def test_sampled_receivers_spread_over_the_join_order():
    # A server writes a room's members in join order (PyChat) or its reverse (ngircd): a sample
    # taken from one end measures only the best or the worst place in every round.
    spread = sorted(sampled_indices(1000, 20, "spread"))
    assert len(spread) == 20 and spread[0] < 50 and spread[-1] >= 950
    gaps = {b - a for a, b in pairwise(spread)}
    assert gaps == {50}
    assert sampled_indices(1000, 3, "last") == {997, 998, 999}
    assert sampled_indices(1000, 3, "first") == {0, 1, 2}
    assert sampled_indices(10, 20, "spread") == set(range(10))  # more wanted than there are
    assert len(sampled_indices(30, 7, "spread")) == 7


@pytest.mark.e2e
@pytest.mark.parametrize("stamp,sample_at", [("kernel", "spread"), ("user", "last")])
def test_loadtest_against_serve_counts_every_delivery(serve, stamp, sample_at):
    r = subprocess.run(
        python_m("pychat", "loadtest", "--port", str(serve), "--clients", "30", "--senders",
                 "5", "--rate", "200", "--count", "200", "--sample", "5", "--json", "--quiet",
                 "--stamp", stamp, "--sample-at", sample_at),
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["stamp"] == stamp
    if stamp == "kernel":  # every sampled line had the kernel's receive time
        assert out["loadgen_delay_ms"]["count"] == out["latency_ms"]["count"]
        assert 0 <= out["loadgen_delay_ms"]["p50"] < 1000  # stamps on the send stamps' clock
    assert out["machine_cpu_s"] > 0 and out["machine_cpu_s_per_million"] > 0
    assert out["connected"] == 30 and out["sent"] == 200
    assert out["expected"] == 200 * 30  # PyChat echoes to the sender: every member gets it
    assert out["delivered"] == out["expected"] and out["lost"] == 0
    assert out["duplicated"] == 0 and out["order_violations"] == 0
    assert out["latency_ms"]["count"] == 5 * 200  # every sampled receiver saw every message
    assert 0 < out["latency_ms"]["p50"] <= out["latency_ms"]["p99"]


@pytest.mark.e2e
def test_loadtest_through_the_irc_door_measures_after_the_arrivals(procs):
    """Through the IRC door (no echo to the sender), every delivery counted, and the settle
    waits for the connect storm's JOIN lines: until client 0 knows every client, then a TOPIC
    query that comes back through the router, behind them (a PING, answered by the door
    itself, came back ahead of them; and a room over 500's last push can come later still)."""
    irc_port = free_port()
    p, _ = start_serve("--irc-port", str(irc_port), acceptors=1)
    procs.append(p)
    r = subprocess.run(  # (over 500 in the room: the router throttles its list pushes)
        python_m("pychat", "loadtest", "--proto", "irc", "--port", str(irc_port), "--clients",
                 "600", "--senders", "3", "--rate", "100", "--count", "30", "--json",
                 "--quiet"),
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["connected"] == 600 and out["sent"] == 30
    assert out["expected"] == 30 * 599  # everyone but its sender
    assert out["delivered"] == out["expected"] and out["lost"] == 0
    assert out["duplicated"] == 0 and out["order_violations"] == 0
    assert out["late_pushes"] == 0, out["notes"]


def test_fewer_receivers_are_sampled_where_they_would_parse_too_many_lines():
    from pychat.clients.loadtest import receivers_sampled

    assert receivers_sampled(20, 200, 50000) == 20  # 4,000 lines a second: all 20
    assert receivers_sampled(20, 2500, 50000) == 20
    assert receivers_sampled(20, 2800, 50000) == 17
    assert receivers_sampled(20, 10400, 50000) == 4
    assert receivers_sampled(20, 100000, 50000) == 2  # at least 2
    assert receivers_sampled(1, 100000, 50000) == 1  # never more than asked
    assert receivers_sampled(20, 0, 50000) == 20  # flat out


@pytest.mark.parametrize("proto", ["pychat", "irc"])
def test_a_counting_client_counts_markers_split_across_reads(proto):
    """A counting client counts the marker in what it reads; a marker cut between two reads,
    at any byte, is counted once."""
    import asyncio

    from pychat.clients.loadtest import Client, Run

    async def go() -> list[int]:
        args = SimpleNamespace(proto=proto, room="#load", size=0, sample=20, rate=100.0,
                               sample_lines=50000)
        run = Run(args, None)
        c = Client(run, 1, sampled=False)
        c.counting = True
        marker = run.marker
        stream = b"".join(b"x" + marker + b"1 %d 0 pad\r\n" % i for i in range(50))
        counts = []
        for cut in range(1, 40):  # every split point within the first lines
            c.count, c.tail = 0, b""
            for part in (stream[:cut], stream[cut:]):
                c.data_received(part)
            counts.append(c.count)
        return counts

    assert set(asyncio.run(go())) == {50}


def test_the_settle_tracks_the_room_s_members_as_each_server_says_them():
    """Client 0's count of the room's members, from PyChat's lists and from IRC lines as
    PyChat's door and ngircd write them (the lobby's names apart)."""
    from pychat.clients.loadtest import Client

    def tracker(proto: str) -> Client:
        c = Client.__new__(Client)  # (no loop, no socket: only what _track reads)
        c.run = SimpleNamespace(proto=proto, room="#load")
        c.members, c.all_in, c.want = set(), None, 0
        return c

    c = tracker("pychat")
    for line in (b"USERS:1,2,3", b"JOINED:4,5", b"LEFT:2"):
        c._track(line)
    assert c.members == {b"1", b"3", b"4", b"5"}
    c = tracker("irc")
    for line in (b":pychat 353 lt0 = #lobby :u100001 lt7",  # the lobby, at registration
                 b":lt0!100002@pychat JOIN #load",
                 b":pychat 353 lt0 = #load :lt0 lt3 @lt4",
                 b":pychat 366 lt0 #load :End of /NAMES list",
                 b":lt5!~lt5@localhost JOIN :#load",  # ngircd's form
                 b":lt6!100009@pychat JOIN #lobby",
                 b":lt3!100004@pychat PART #load",
                 b":lt4!x@h QUIT :bye",
                 b":lt5!x@h NICK :lt55",
                 b":lt7!x@h NICK lt77"):  # (not a member here)
        c._track(line)
    assert c.members == {b"lt0", b"lt55"}


# ---- --plot and progress (issue 18) ------------------------------------------------------------

FAKE_PYPLOT = '''
"""A stand-in for matplotlib.pyplot: says when it draws, and writes a file."""
import sys


class _Any:
    def __getattr__(self, name):
        return lambda *a, **k: None


class _Figure(_Any):
    def savefig(self, path, dpi=None):
        print("fake pyplot: drawing", flush=True)
        with open(path, "wb") as f:
            f.write(b"\\x89PNG fake")


def subplots(*a, **k):
    return _Figure(), (_Any(), _Any())


def close(fig):
    pass
'''


def fake_matplotlib(folder, works: bool) -> dict:
    """An environment whose ``import matplotlib`` finds a stand-in: one that draws (and says
    so), or one that is not there (its import fails, as a missing package's does)."""
    pkg = folder / "matplotlib"
    pkg.mkdir()
    if works:
        (pkg / "__init__.py").write_text("def use(backend):\n    pass\n")
        (pkg / "pyplot.py").write_text(FAKE_PYPLOT)
    else:
        (pkg / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    return dict(os.environ, PYTHONPATH=str(folder))


def test_plot_without_matplotlib_fails_before_anything_is_run(tmp_path):
    port = free_port()  # nothing listens: a run would fail to connect, and say so
    r = subprocess.run(python_m("pychat", "loadtest", "--port", str(port), "--plot",
                                str(tmp_path / "lat.png"), "--clients", "3", "--count", "3"),
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env=fake_matplotlib(tmp_path, works=False))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("loadtest: --plot needs matplotlib, which is not installed (pip install "
                        "'pychat[plot]', or matplotlib); nothing was run\n")
    assert not (tmp_path / "lat.png").exists()


@pytest.mark.e2e
def test_the_summary_comes_before_the_plot_and_progress_is_a_line_each(serve, tmp_path):
    png = tmp_path / "lat.png"
    r = subprocess.run(
        python_m("pychat", "loadtest", "--port", str(serve), "--clients", "10", "--senders", "2",
                 "--rate", "100", "--count", "180", "--sample", "2", "--json", "--plot",
                 str(png)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # one stream: the order is kept
        text=True, timeout=120, cwd=ROOT, env=fake_matplotlib(tmp_path, works=True))
    assert r.returncode == 0, r.stdout
    out = r.stdout
    start, end = out.index("{\n"), out.index("\n}\n") + 3
    assert json.loads(out[start:end])["delivered"] == 180 * 10
    assert out.index("fake pyplot: drawing") >= end  # printed, then drawn
    assert f"loadtest: plot written to {png}" in out and png.read_bytes().startswith(b"\x89PNG")
    # the output is not a terminal: progress is whole lines, no carriage returns
    assert "\r" not in out
    assert re.search(r"^loadtest: t=\s*1\.0s sent=\d+ delivered=\d+ p99~", out, re.M), out
