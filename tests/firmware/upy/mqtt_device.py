"""A device-side MQTT client driven line by line from stdin, reporting on stdout, for the broker tests.

Usage: micropython -m mqtt_device HOST PORT CLIENT_ID USER PASSWORD KEEPALIVE [CA_DER_FILE]
Will: t/ID/state "offline" (retained, QoS 1); birth on every connect: t/ID/state "online"; subscribes
t/ID/cmd. Commands: "pub TOPIC TEXT QOS", "big", "stats", "disconnect", "hog BYTES MAX_PACKET [S]" (max_packet
set, and the heap filled but for one hole of BYTES until the next message arrives, or for S seconds), and with
dns_site.py as socket, "dns dead" or "dns ADDRESS" (the site's DNS server stops answering, or answers again with
that address).
Reports: "UP n", "DOWN", "RX topic text", "ACKED text", "REFUSED reason",
"STATS connects resends pings oversize last_error", "BYE", "HOG", "UNHOG", "DNS dead|ADDRESS".
"""

import asyncio
import gc
import sys

from mqtt import MQTTClient


def main():
    host, port, cid, user, password, keepalive = sys.argv[1:7]
    tls = None
    if len(sys.argv) > 7:
        import ssl

        with open(sys.argv[7], "rb") as f:
            ca = f.read()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.verify_mode = ssl.CERT_REQUIRED
        tls.load_verify_locations(cadata=ca)
    state = "t/%s/state" % cid

    up = [0]  # the link (its connect number) said UP and not yet said DOWN

    def down():
        if up[0]:
            print("DOWN")
            up[0] = 0

    async def birth(client):
        down()  # the link before this one ended and was rebuilt between two looks of watch()
        await client.publish(state, b"online", retain=True, qos=1)
        print("UP", client.connects)
        up[0] = client.connects

    hog = [None]

    def message(topic, payload, retained):
        hog[0] = None
        print("RX", topic, payload.decode())

    client = MQTTClient(cid, host, int(port), user=user, password=password, keepalive=int(keepalive),
                        will=(state, b"offline"), ssl=tls, max_packet=512, on_message=message,
                        on_connect=birth, ack_timeout=1, backoff=(0.1, 1), connect_timeout=2)

    async def pub(topic, text, qos):
        await client.publish(topic, text.encode(), qos=qos)
        print("ACKED", text)

    async def unhog(s):
        await asyncio.sleep(s)
        hog[0] = None
        print("UNHOG")

    async def watch():
        seen = 0  # the link last seen open; UP is said before the link opens, so only a link seen open ends
        while True:
            if client.isconnected():
                seen = client.connects
            elif seen == up[0]:
                down()
            await asyncio.sleep_ms(20)

    async def run():
        client.start()
        await client.subscribe("t/%s/cmd" % cid)
        tasks = [asyncio.create_task(watch())]
        stdin = asyncio.StreamReader(sys.stdin)
        while True:
            words = (await stdin.readline()).decode().split()
            if not words:
                continue
            if words[0] == "pub":
                tasks.append(asyncio.create_task(pub(words[1], words[2], int(words[3]))))
            elif words[0] == "big":
                try:
                    await client.publish("t/%s/data" % cid, b"x" * 600, qos=1)
                except ValueError as e:
                    print("REFUSED", e)
            elif words[0] == "stats":
                print("STATS", client.connects, client.resends, client.pings, client.oversize,
                      repr(client.last_error))
            elif words[0] == "hog":
                client.max_packet = int(words[2])
                if len(words) > 3:
                    tasks.append(asyncio.create_task(unhog(int(words[3]))))
                gc.collect()
                hole = bytes(int(words[1]))
                hog[0] = keep = [None] * 1000  # every block held by one list: a failed step leaves no garbage
                size, i = 1024, 0
                while size and i < 1000:
                    try:
                        keep[i] = bytes(size)
                        i += 1
                    except MemoryError:  # no block this big left: smaller ones
                        size //= 2
                del hole, keep
                gc.collect()
                print("HOG")
            elif words[0] == "dns":
                import socket

                socket.dead[0] = words[1] == "dead"
                if not socket.dead[0]:
                    socket.names["broker.site"] = words[1]
                print("DNS", words[1])
            elif words[0] == "disconnect":
                await client.disconnect()
                print("BYE")
                return

    asyncio.run(run())


main()
