"""Runs under MicroPython: time to seal one pack (CBOR body + HMAC 256/64 COSE_Mac0) against encoding
the same pack as SenML-JSON, on the same interpreter. argv: a file with the pack as JSON (SenML labels
as text keys of integers), rounds. Prints one JSON line."""

import json
import sys
import time

from protocol import message, senml_resolve

KEY = bytes(range(32))


def main():
    with open(sys.argv[1]) as f:
        raw = json.load(f)
    rounds = int(sys.argv[2])
    pack = [{int(k): rec[k] for k in rec} for rec in raw]
    t0 = time.ticks_us()
    for seq in range(rounds):
        sealed = message.encode(message.data("dev-01", 1, seq, pack), KEY)
    t1 = time.ticks_us()
    for _ in range(rounds):
        text = senml_resolve.to_json(pack)
    t2 = time.ticks_us()
    print(json.dumps({"seal_us": time.ticks_diff(t1, t0) / rounds, "json_us": time.ticks_diff(t2, t1) / rounds,
                      "sealed_bytes": len(sealed), "json_bytes": len(text)}))


main()
