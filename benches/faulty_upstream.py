#!/usr/bin/env python3
"""An upstream that fails each request the way its path says, for benches/storm.sh:

    /faulty/reset    the connection reset (RST) once the request head is read
    /faulty/short    200 with Content-Length: 100, ten bytes of body, then closed
    /faulty/drip     the response head a byte every 100 ms
    anything else    silence: the request read, never answered

    benches/faulty_upstream.py PORT
"""
import asyncio
import socket
import struct
import sys

HEAD = b"HTTP/1.1 200 OK\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"


async def serve(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    line = head.split(b"\r\n", 1)[0]
    try:
        if b"/faulty/reset" in line:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif b"/faulty/short" in line:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            await writer.drain()
        elif b"/faulty/drip" in line:
            for byte in HEAD:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
        else:
            await asyncio.sleep(30)
    except ConnectionError:
        pass
    writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
