"""A fleet on one machine: three gateways behind a picker that reads their /metrics, vs. round-robin.

`QueueDepthPicker` is a TEST DOUBLE of the Gateway API Inference Extension's endpoint picker (EPP),
not the EPP: it keeps only the EPP's load rule. Like the EPP it refreshes each replica's model-server
gauges (`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, `vllm:num_requests_running`) every
50 ms from /metrics, and sends a request to the replica with the fewest waiting requests, then the
least KV cache in use, then the fewest running. `RoundRobin` is what a Kubernetes Service does.

The workload is the same for both (a fixed, seeded sequence): streamed completions arriving as a
Poisson process at a given rate (open loop, as users arrive); one in four is long (64 tokens), the
rest short (4 tokens).
Round-robin puts a short request behind a long one while another replica is idle; the picker
sees the queue and does not. Its numbers are up to one refresh old, so a burst of arrivals can all
pick the one replica that looked idle; `QueueDepthPickerCountingOwn` also counts, as waiting, what
it sent to each replica since that replica's last read. Time to first token is measured per request
at the client.

`--scrape`: what a /metrics scrape costs while every slot of a `parallel: 4` model generates and
more requests wait (the model-server gauges are read at scrape time), against an idle gateway.

Small on purpose (SmolLM2, one thread per gateway, a few minutes on 2 cores):
`.venv/bin/python bench/fleet.py` and `.venv/bin/python bench/fleet.py --scrape`.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, machine, median, nexa, p95, stream_completion, table, write_manifest  # noqa: E402

MODEL = {"name": "smollm2", "source": "smollm2", "nctx": 512, "n_threads": 1, "preload": True}
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8,"
LONG, SHORT = 64, 4
GAUGES = ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:num_requests_running")


class RoundRobin:
    name = "round-robin (a Service)"

    def __init__(self, urls: list[str]):
        self._next = itertools.cycle(urls)
        self._lock = threading.Lock()

    def pick(self) -> str:
        with self._lock:
            return next(self._next)

    def close(self) -> None:
        pass


class QueueDepthPicker:
    """Test double of the EPP's queue-depth rule (see the module docstring); not the EPP."""

    name = "queue-depth picker (EPP rule)"
    count_own = False

    def __init__(self, urls: list[str], model: str = "smollm2", refresh_s: float = 0.05):
        self.urls, self.model, self.refresh_s = urls, model, refresh_s
        self.scores: dict[str, tuple[float, float, float]] = {url: (0.0, 0.0, 0.0) for url in urls}
        self.read_at = dict.fromkeys(urls, 0.0)  # when each replica's scores were last read
        self.sent: dict[str, list[float]] = {url: [] for url in urls}  # when this picker sent to it
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # one scraper per replica, as the EPP runs one refresh loop per endpoint
        self._threads = [threading.Thread(target=self._refresh, args=(url,), daemon=True) for url in urls]
        for t in self._threads:
            t.start()

    def _read(self, client: httpx.Client, url: str) -> tuple[float, float, float]:
        """The three gauges of our model, from their lines only: a full parse of the exposition in
        Python costs milliseconds of this process's CPU (and GIL) per scrape, 60 scrapes a second,
        where the EPP (Go) spends microseconds; that would slow the clients this bench times."""
        values = dict.fromkeys(GAUGES, 0.0)
        label = f'model_name="{self.model}"'
        for line in client.get(url + "/metrics").text.splitlines():
            if line.startswith("vllm:") and label in line:
                name = line.split("{", 1)[0]
                if name in values:
                    values[name] = float(line.rsplit(" ", 1)[1])
        return tuple(values[name] for name in GAUGES)

    def _refresh(self, url: str) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                asked = time.monotonic()
                try:
                    scores = self._read(client, url)
                except httpx.HTTPError:
                    scores = (float("inf"),) * 3
                with self._lock:
                    self.scores[url], self.read_at[url] = scores, asked
                    self.sent[url] = [t for t in self.sent[url] if t >= asked]
                self._stop.wait(self.refresh_s)

    def pick(self) -> str:
        with self._lock:
            scores = {}
            for url, (waiting, kv, running) in self.scores.items():
                # requests sent since the replica's last read are not in its numbers yet
                unseen = len(self.sent[url]) if self.count_own else 0
                scores[url] = (waiting + unseen, kv, running)
            best = min(scores.values())
            url = random.choice([u for u, score in scores.items() if score == best])
            self.sent[url].append(time.monotonic())
            return url

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)


class QueueDepthPickerCountingOwn(QueueDepthPicker):
    """The same rule, also counting as waiting the requests it sent to a replica since that replica's
    last read (stale numbers otherwise send a whole burst to the one replica that looked idle)."""

    name = "queue-depth picker + own sends"
    count_own = True


def workload(rate: float, n: int, seed: int) -> list[tuple[float, int]]:
    """Open loop: (arrival second, max_tokens) of `n` requests arriving as a Poisson process."""
    rng = random.Random(seed)
    at, out = 0.0, []
    for _ in range(n):
        at += rng.expovariate(rate)
        out.append((at, LONG if rng.random() < 0.25 else SHORT))
    return out


def run_level(picker, requests: list[tuple[float, int]]) -> list[float]:
    """Send each request at its arrival time (a thread each); the time to first token of each."""
    ttfts: list[float] = []
    lock = threading.Lock()

    def send(max_tokens: int) -> None:
        with httpx.Client(timeout=300) as http:
            ttft, _, _ = stream_completion(http, picker.pick() + "/v1/completions", {
                "model": "smollm2", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0})
        with lock:
            ttfts.append(ttft)

    threads = []
    start = time.monotonic()
    for at, max_tokens in requests:
        time.sleep(max(0.0, start + at - time.monotonic()))
        threads.append(threading.Thread(target=send, args=(max_tokens,)))
        threads[-1].start()
    for t in threads:
        t.join()
    return ttfts


def fleet(rates: list[float], per_level: int) -> None:
    manifest = write_manifest([MODEL])
    gateways = [nexa("-c", str(manifest), port=free_port()) for _ in range(3)]
    urls = [g.url for g in gateways]
    rows = []
    try:
        for url in urls:  # warm each engine once
            with httpx.Client(timeout=120) as http:
                stream_completion(http, url + "/v1/completions", {"model": "smollm2", "prompt": PROMPT, "max_tokens": 4})
        for i, rate in enumerate(rates):
            requests = workload(rate, per_level, seed=i)
            result = {}
            policies = [RoundRobin, QueueDepthPicker, QueueDepthPickerCountingOwn]
            for make in policies[i % 3:] + policies[:i % 3]:  # each goes first in turn
                picker = make(urls)
                try:
                    ttfts = run_level(picker, requests)
                finally:
                    picker.close()
                result[make] = (median(ttfts) * 1000, p95(ttfts) * 1000)
            rr, qd, own = result[RoundRobin], result[QueueDepthPicker], result[QueueDepthPickerCountingOwn]
            rows.append([rate, *rr, *qd, *own])
            print(f"{rate} req/s: round-robin TTFT p50/p95 {rr[0]:.0f}/{rr[1]:.0f} ms, "
                  f"picker {qd[0]:.0f}/{qd[1]:.0f} ms, picker + own sends {own[0]:.0f}/{own[1]:.0f} ms", flush=True)
    finally:
        for g in gateways:
            g.stop()
    print(f"\n3 gateways x SmolLM2 (parallel 1, 1 thread), {per_level} Poisson arrivals per rate and policy "
          f"(1 in 4: {LONG} tokens, else {SHORT}); {machine()}\n")
    print(table(["req/s", "RR p50 ms", "RR p95 ms", "picker p50 ms", "picker p95 ms", "picker+own p50 ms",
                 "picker+own p95 ms"], rows))


def scrape_cost(scrapes: int) -> None:
    manifest = write_manifest([{**MODEL, "parallel": 4, "max_queue": 64}])
    gateway = nexa("-c", str(manifest), port=free_port())
    rows = []
    try:
        with httpx.Client(timeout=10) as http:
            def served() -> dict[str, float]:
                """The gateway's own timing of its /metrics answers (nexa_request_seconds, route /metrics)."""
                counts = {}
                for family in text_string_to_metric_families(http.get(gateway.url + "/metrics").text):
                    if family.name == "nexa_request_seconds":
                        for s in family.samples:
                            if s.labels.get("route") == "/metrics" and s.name.endswith("_bucket"):
                                counts[s.labels["le"]] = s.value
                return counts

            def sample(label: str, check=None) -> None:
                before = served()
                times = []
                for _ in range(scrapes):
                    started = time.perf_counter()
                    text = http.get(gateway.url + "/metrics").text
                    times.append(time.perf_counter() - started)
                    if check:
                        check(text)
                    time.sleep(0.01)
                times.sort()
                after = served()
                n = after["+Inf"] - before.get("+Inf", 0)
                within = lambda le: (after[le] - before.get(le, 0)) / n  # noqa: E731
                rows.append([label, median(times) * 1000, times[int(0.99 * (len(times) - 1))] * 1000, max(times) * 1000,
                             f"{within('0.005'):.1%}", f"{within('0.01'):.1%}"])

            sample("idle")
            stop = threading.Event()
            busy = {"max_running": 0.0, "max_waiting": 0.0}

            def check(text: str) -> None:
                for family in text_string_to_metric_families(text):
                    if family.name == "vllm:num_requests_running":
                        busy["max_running"] = max(busy["max_running"], sum(s.value for s in family.samples))
                    if family.name == "vllm:num_requests_waiting":
                        busy["max_waiting"] = max(busy["max_waiting"], sum(s.value for s in family.samples))

            def load() -> None:
                with httpx.Client(timeout=300) as client:
                    while not stop.is_set():
                        stream_completion(client, gateway.url + "/v1/completions",
                                          {"model": "smollm2", "prompt": PROMPT, "max_tokens": 64, "temperature": 0})

            workers = [threading.Thread(target=load) for _ in range(6)]  # 4 slots busy, 2 waiting
            for w in workers:
                w.start()
            time.sleep(2)
            sample("4 slots generating, 2 waiting", check)
            stop.set()
            for w in workers:
                w.join(120)
    finally:
        gateway.stop()
    print(f"\nGET /metrics over loopback, {scrapes} scrapes each: client-side time (HTTP and scheduling included), "
          f"and the share the gateway itself answered within 5 and 10 ms (its nexa_request_seconds); "
          f"under load saw running<={busy['max_running']:.0f}, waiting<={busy['max_waiting']:.0f}; {machine()}\n")
    print(table(["gateway", "client p50 ms", "client p99 ms", "client max ms", "served <=5 ms", "served <=10 ms"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scrape", action="store_true", help="measure /metrics under load instead")
    parser.add_argument("--rates", default="0.4,0.8,1.2", help="arrival rates (requests/s), one level each")
    parser.add_argument("--per-level", type=int, default=40, help="requests per rate and policy")
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    if args.scrape:
        scrape_cost(args.scrapes)
    else:
        fleet([float(x) for x in args.rates.split(",")], args.per_level)


if __name__ == "__main__":
    main()
