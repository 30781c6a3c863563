"""What the load generator measured, and how it is reported: table, JSON, plot.

Pure: no sockets. Latencies are kept as float milliseconds in ``array('d')`` (8 bytes each), and
per second, so a plot of latency over time needs no second pass.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import asdict, dataclass, field


def percentile(sorted_values, q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest rank; NaN when empty."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    k = max(0, min(n - 1, math.ceil(q / 100.0 * n) - 1))
    return sorted_values[k]


@dataclass
class Summary:
    proto: str
    clients: int
    senders: int
    rate: float  # aggregate messages/s asked for; 0 = flat out
    duration_s: float = 0.0
    connect_s: float = 0.0
    connected: int = 0
    sent: int = 0
    expected: int = 0  # deliveries expected (every member, the sender too for pychat)
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    order_violations: int = 0
    # arrival lines (JOIN, USERS, JOINED) after the settle: a room over 500's pushes are
    # throttled (router/state.py push_interval), so the last may come during the run
    late_pushes: int = 0
    sampled: int = 0  # receivers that parsed every line (--sample, fewer at high rates)
    disconnected: int = 0
    deliveries_per_s: float = 0.0
    latency_ms: dict = field(default_factory=dict)  # p50 p90 p99 max count
    loadgen_cpu_pct: float = 0.0
    loadgen_cpu_s: float = 0.0  # the load generator's own CPU over the run (user + system)
    loadgen_cpu_s_per_million: float | None = None  # ... per million deliveries
    # its user-mode part: its own work (reading, counting, parsing, framing). The system part
    # also holds kernel TCP work done on the server's behalf (on loopback a read that frees
    # buffer space may send the server's queued data in the reader's context), so it varies
    # with timing from run to run
    loadgen_user_cpu_s_per_million: float | None = None
    server_cpu_s: float | None = None
    server_cpu_s_per_million: float | None = None
    loadgen_bound: bool = False
    machine_cpu_s: float | None = None  # every core, every process, softirqs too
    machine_cpu_s_per_million: float | None = None
    stamp: str = "user"  # latency ends at: kernel (socket receive time) or user (our read)
    loadgen_delay_ms: dict = field(default_factory=dict)  # kernel stamp to our read
    notes: list = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


class Latencies:
    def __init__(self) -> None:
        self.all = array("d")
        self.by_second: dict[int, array] = {}

    def add(self, second: int, ms: float) -> None:
        self.all.append(ms)
        bucket = self.by_second.get(second)
        if bucket is None:
            bucket = self.by_second[second] = array("d")
        bucket.append(ms)

    def stats(self) -> dict:
        s = sorted(self.all)
        if not s:
            return {"count": 0}
        return {"count": len(s), "p50": round(percentile(s, 50), 3),
                "p90": round(percentile(s, 90), 3), "p99": round(percentile(s, 99), 3),
                "max": round(s[-1], 3)}

    def series(self) -> list[tuple[int, float, float]]:
        out = []
        for sec in sorted(self.by_second):
            s = sorted(self.by_second[sec])
            out.append((sec, percentile(s, 50), percentile(s, 99)))
        return out


def table(s: Summary) -> str:
    lat = s.latency_ms
    rows = [
        ("protocol", s.proto),
        ("clients connected", f"{s.connected}/{s.clients} in {s.connect_s:.2f} s"),
        ("senders, rate", f"{s.senders}, {'flat out' if not s.rate else f'{s.rate:g} msg/s'}"),
        ("duration", f"{s.duration_s:.2f} s"),
        ("messages sent", f"{s.sent}"),
        ("deliveries", f"{s.delivered}/{s.expected} ({s.deliveries_per_s:,.0f}/s)"),
        ("lost, duplicated", f"{s.lost}, {s.duplicated}"),
        ("order violations", f"{s.order_violations}"),
        ("disconnected", f"{s.disconnected}"),
    ]
    if lat.get("count"):
        rows.append(("latency ms p50/p90/p99/max",
                     f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f} / "
                     f"{lat['max']:.2f} ({lat['count']} samples"
                     + (f" from {s.sampled} receivers)" if s.sampled else ")")))
    if s.stamp == "kernel" and s.loadgen_delay_ms.get("count"):
        d = s.loadgen_delay_ms
        rows.append(("read delay ms p50/p99/max",
                     f"{d['p50']:.2f} / {d['p99']:.2f} / {d['max']:.2f} (the load generator's "
                     "own, left out of the latency)"))
    per_m = (f", {s.loadgen_cpu_s_per_million:.2f} s per million deliveries"
             if s.loadgen_cpu_s_per_million is not None else "")
    if s.loadgen_user_cpu_s_per_million is not None:
        per_m += f" ({s.loadgen_user_cpu_s_per_million:.2f} s of it in user mode)"
    rows.append(("load generator CPU", f"{s.loadgen_cpu_pct:.0f}% of a core{per_m}"))
    if s.server_cpu_s is not None:
        per_m = (f", {s.server_cpu_s_per_million:.1f} s per million deliveries"
                 if s.server_cpu_s_per_million is not None else "")
        rows.append(("server CPU", f"{s.server_cpu_s:.2f} s{per_m}"))
    if s.machine_cpu_s_per_million is not None:
        rows.append(("machine CPU", f"{s.machine_cpu_s:.2f} s, "
                                    f"{s.machine_cpu_s_per_million:.1f} s per million deliveries "
                                    "(all cores: server, load generator, kernel)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in s.notes]
    return "\n".join(lines)


def plot(lat: Latencies, path: str, title: str) -> None:
    """Latency over time (p50, p99 per second) and a histogram, as a PNG (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    series = lat.series()
    if series:
        xs = [t for t, _, _ in series]
        ax1.plot(xs, [p50 for _, p50, _ in series], label="p50")
        ax1.plot(xs, [p99 for _, _, p99 in series], label="p99")
    ax1.set_xlabel("second of the run")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("latency over time")
    ax1.legend()
    if len(lat.all):
        ax2.hist(lat.all, bins=60)
        ax2.set_yscale("log")
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("deliveries")
    ax2.set_title("histogram")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
