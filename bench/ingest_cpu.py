"""The gateway's ingest handler alone, in process: CPU per device message and, with --profile, where it goes.

    .venv/bin/python -m bench.ingest_cpu                     # CPU µs per message, best and median of rounds
    .venv/bin/python -m bench.ingest_cpu --profile 25        # cProfile of one round, top 25 by own time

bench/gateway_throughput.py measures the whole daemon end to end (MQTT in, SQLite, uplink out); this isolates
`Gateway.handle_site`, the part that runs for every device message, on the same messages (lifeline/virtual/
loadgen.build: gas packs of three readings from 200 devices) in batches of the shipped ingest size, with the
store on disk as the daemon has it. The uplink does not run, so nothing leaves the outbox. Prints a table and
writes bench/results/ingest_cpu.json (or --json F); nothing asserts speed; the figures are for
docs/performance.md.

The baseline, timed in the same rounds on the same messages: the floor any gateway pays for them, whatever its
design. It decodes each envelope with cbor2, checks its HMAC with the device's key (the COSE MAC structure built
with cbor2, the digest with hashlib's C HMAC) and decodes the body it guards, since a gateway that raises alarms
must read the readings, and does nothing else. "x floor" is the handler's multiple of it: what the admission
checks, rules, store and outbox cost on top of what no gateway can avoid. Unlike the handler's µs, the multiple
holds from one machine to another.
"""

from __future__ import annotations

import argparse
import cProfile
import hmac
import io
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import cbor2

from bench import report
from gateway.daemon import Gateway
from gateway.ingest import Incoming
from gateway.site_config import load
from lifeline.virtual.loadgen import Load, build, device_id, device_key

SITE = "bench"


def make_gateway(d: Path, devices: int) -> Gateway:
    """A gateway with the bench's gas devices (in devices.csv, as a large site lists them) and the shipped
    defaults; brokers are named but never reached."""
    (d / "devices.csv").write_text("id,class,key\n" + "".join(f"{device_id(i)},gas,{device_key(i).hex()}\n"
                                                              for i in range(devices)))
    (d / "site.toml").write_text(f'[site]\nid = "{SITE}"\nkey = "{"00" * 32}"\ndevices_file = "devices.csv"\n'
                                 f'[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
                                 f'port = 1\n[store]\npath = "{d / "gw.sqlite"}"\n')
    return Gateway(load(d / "site.toml"))


def batches(load_: Load, first_seq: int, per_device: int, size: int) -> list[list[Incoming]]:
    now = time.time()
    msgs = [build(load_, dev, seq) for seq in range(first_seq, first_seq + per_device) for dev in range(load_.devices)]
    items = [Incoming(topic, payload, False, now) for topic, payload in msgs]
    return [items[i:i + size] for i in range(0, len(items), size)]


def run(gw: Gateway, work: list[list[Incoming]]) -> float:
    """CPU seconds of this process to handle `work`."""
    start = time.process_time()
    for batch in work:
        gw.handle_site(batch)
    return time.process_time() - start


def floor(keys: dict[bytes, bytes], work: list[list[Incoming]]) -> float:
    """CPU seconds of this process to decode `work`'s envelopes, check their MACs and decode their bodies."""
    start = time.process_time()
    for batch in work:
        for item in batch:
            protected, unprotected, payload, tag = cbor2.loads(item.payload).value
            mac = hmac.digest(keys[unprotected[4]], cbor2.dumps(["MAC0", protected, b"", payload]), "sha256")
            if not hmac.compare_digest(mac[:len(tag)], tag):
                raise ValueError(f"{item.topic}: the MAC does not match")
            cbor2.loads(payload)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--messages", type=int, default=25, help="per device and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500, help="messages per handle_site call (the shipped batch)")
    parser.add_argument("--profile", type=int, metavar="N", help="profile one round, print the top N functions")
    parser.add_argument("--json", type=Path, default=report.RESULTS / "ingest_cpu.json",
                        help="where the figures go (not written with --profile)")
    args = parser.parse_args()
    load_ = Load(SITE, args.devices, args.messages, 0, start_time=time.time() - 86400)
    with tempfile.TemporaryDirectory() as tmp:
        gw = make_gateway(Path(tmp), args.devices)
        seq = 1
        run(gw, batches(load_, seq, args.messages, args.batch))  # warm-up: first sight of every device
        seq += args.messages
        keys = {device_id(i).encode(): device_key(i) for i in range(args.devices)}
        per_msg, floor_us = [], []
        for _ in range(args.rounds):
            work = batches(load_, seq, args.messages, args.batch)
            seq += args.messages
            n = sum(map(len, work))
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                run(gw, work)
                prof.disable()
                out = io.StringIO()
                stats = pstats.Stats(prof, stream=out)
                stats.sort_stats("tottime").print_stats(args.profile)
                stats.sort_stats("cumulative").print_stats(args.profile)
                print(out.getvalue())
                break
            floor_us.append(floor(keys, work) / n * 1e6)
            per_msg.append(run(gw, work) / n * 1e6)
        accepted = sum(gw.accepted.values())
        gw.conn.close()
    if not per_msg:
        return
    quarantined = sum(gw.quarantine.counts.values())
    row = {"best_us": round(min(per_msg), 1), "median_us": round(statistics.median(per_msg), 1),
           "rounds": args.rounds, "messages_a_round": args.devices * args.messages, "accepted": accepted,
           "quarantined": quarantined}
    base = {"best_us": round(min(floor_us), 2), "median_us": round(statistics.median(floor_us), 2),
            "per_msg_us": [round(x, 2) for x in floor_us]}
    times = {"best": round(min(per_msg) / min(floor_us), 1),
             "median": round(statistics.median(per_msg) / statistics.median(floor_us), 1)}
    report.print_rows({"ingest": row, "floor": {**row, **base, "accepted": "", "quarantined": ""},
                       "x floor": {k: "" for k in row} | {"best_us": times["best"], "median_us": times["median"]}},
                      list(row))
    print(f"handle_site CPU per device message, µs: best {row['best_us']}, median {row['median_us']} "
          f"({args.rounds} rounds of {args.devices * args.messages}; accepted {accepted}, quarantined {quarantined}); "
          f"{times['best']} times the floor (envelope and body decoded with cbor2, MAC checked: best "
          f"{base['best_us']} µs, median {base['median_us']})")
    sizes = {"devices": args.devices, "messages": args.messages, "batch": args.batch}
    path = report.save(args.json, {**report.stamp(), "sizes": sizes, **row,
                                   "per_msg_us": [round(x, 2) for x in per_msg], "floor": base, "x_floor": times})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
