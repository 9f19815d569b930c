"""Page-cache traffic for the fever control: write a file larger than 512 MB once, then read it
through the page cache over and over into one reused buffer (no allocation of our own).
Usage: python pagecache.py PATH MB SECONDS"""
import os
import sys
import time

path, mb, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
chunk = bytearray(os.urandom(1 << 20))
with open(path, "wb", buffering=0) as f:
    for _ in range(mb):
        f.write(chunk)
passes = 0
with open(path, "rb", buffering=0) as f:
    while time.monotonic() < end:
        f.seek(0)
        while f.readinto(chunk) and time.monotonic() < end:
            pass
        passes += 1
print(f"{passes} passes over {mb} MB", file=sys.stderr)
