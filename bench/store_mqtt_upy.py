"""MicroPython side of bench/store_mqtt.py: heap and flash cost of flashq and mqtt on the unix port.

Usage: micropython -X heapsize=64K -m store_mqtt_upy BROKER_PORT IMAGE
Prints one JSON line. Heap figures are GC heap bytes: "retained" is what stays allocated after a
gc.collect(), "alloc/op" is what one operation allocates with the collector off (its garbage, i.e. the
transient headroom it needs). Flash figures come from littlefs (the ESP32's file system) mounted on a
counting block device backed by IMAGE.
"""

import asyncio
import gc
import json
import os
import sys

BLOCK = 4096
BLOCKS = 96
out = {}


def used():
    gc.collect()
    return gc.mem_alloc()


def alloc_per_op(fn, n):
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(n):
        fn()
    per = (gc.mem_alloc() - before) // n
    gc.enable()
    return per


class CountingDev:
    """Block device over an image file that counts flash programs and erases, as littlefs issues them."""

    def __init__(self, path):
        with open(path, "wb") as f:
            for _ in range(BLOCKS):
                f.write(b"\xff" * BLOCK)
        self.f = open(path, "r+b")  # noqa: SIM115 - held open as long as it is mounted
        self.prog = self.erase = 0

    def readblocks(self, block, buf, off=0):
        self.f.seek(block * BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, off=0):
        self.prog += len(buf)
        self.f.seek(block * BLOCK + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return BLOCKS
        if op == 5:
            return BLOCK
        if op == 6:
            self.erase += 1
            return 0
        return None


def bench_flashq(image):
    """Heap figures on a host directory (a native block device allocates nothing, unlike the Python
    counting device below); flash figures on littlefs."""
    base = used()
    from flashq import FlashQ

    out["flashq_import"] = used() - base
    here = image.rsplit("/", 1)[0] + "/q"
    base = used()
    q = FlashQ(here, capacity=65536, segment=4096, max_record=512)
    out["flashq_open_retained"] = used() - base
    record = b"r" * 200
    out["flashq_put_alloc_per_op"] = alloc_per_op(lambda: q.put(record), 5)

    def send_one():
        q.ack(q.peek(1)[0][0])

    out["flashq_peek_ack_alloc_per_op"] = alloc_per_op(send_one, 5)
    for _ in range(20):
        q.put(record)
    q.close()
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    q = FlashQ(here, capacity=65536, segment=4096, max_record=512)
    out["flashq_reopen_alloc_per_record"] = (gc.mem_alloc() - before) // len(q)
    gc.enable()
    q.close()

    dev = CountingDev(image)
    os.VfsLfs2.mkfs(dev)
    os.mount(os.VfsLfs2(dev), "/flash")
    lq = FlashQ("/flash/q", capacity=65536, segment=4096, max_record=512)
    for size in (100, 200):
        p, e = dev.prog, dev.erase
        for _ in range(50):
            lq.put(b"x" * size)
        out["lfs_put" + str(size) + "_prog_bytes"] = (dev.prog - p) // 50
        out["lfs_put" + str(size) + "_erases"] = (dev.erase - e) / 50
        p, e = dev.prog, dev.erase
        for _ in range(50):
            lq.ack(lq.peek(1)[0][0])
        out["lfs_ack_prog_bytes"] = (dev.prog - p) // 50
        out["lfs_ack_erases"] = (dev.erase - e) / 50
    out["index_bytes"] = os.stat("/flash/q/idx")[6]
    lq.close()
    os.umount("/flash")
    return FlashQ(here, capacity=65536, segment=4096, max_record=512)


async def bench_mqtt(port):
    base = used()
    from mqtt import MQTTClient

    out["mqtt_import"] = used() - base
    base = used()
    c = MQTTClient("bench", "127.0.0.1", port, keepalive=30, will=("b/state", b"offline"), max_packet=1024)
    out["mqtt_client_retained"] = used() - base
    c.start()
    await c.wait_connected()
    await asyncio.sleep_ms(100)
    out["mqtt_connected_retained"] = used() - base
    payload = b"p" * 200
    await c.publish("b/data", payload, qos=1)
    n = 5
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(n):
        await c.publish("b/data", payload, qos=1)
    out["mqtt_qos1_publish_alloc_per_op"] = (gc.mem_alloc() - before) // n
    gc.enable()
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(n):
        await c.publish("b/data", payload, qos=0)
    out["mqtt_qos0_publish_alloc_per_op"] = (gc.mem_alloc() - before) // n
    gc.enable()
    await c.disconnect()


def main():
    port, image = int(sys.argv[1]), sys.argv[2]
    out["baseline_heap"] = used()
    q = bench_flashq(image)
    asyncio.run(bench_mqtt(port))
    q.close()
    out["heap_total"] = gc.mem_alloc() + gc.mem_free()
    out["heap_in_use_end"] = used()
    print(json.dumps(out))


main()
