"""Reading a provisioning stick: StickMedia against the bare mtools commands it runs.

Run: .venv/bin/python bench/stick.py [--count N]

The stick is a sparse 8 GiB FAT32 image holding the archive and a few other files. The
agent's path opens it (read-only, first sector, offset), lists the root, copies the archive
into a private directory (0600, fsynced), writes result.json and provisioning.log back and
releases the stick. The baseline runs, as plain subprocesses, the mtools commands that work
needs at minimum (``mdir -b``, ``mcopy`` to stdout, ``mmd``, two ``mcopy -o``). The ratio is
the agent's overhead on top: checks, private mtools config, caps, durable writes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agent.usb.media import MediaSettings, StickMedia

NAME = "certificates-omni_bench-appliance-1.zip"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def make_stick(work: Path) -> Path:
    image = work / "stick.img"
    with image.open("wb") as fh:
        fh.truncate(8 * 1024**3)
    subprocess.run(["mkfs.vfat", "-F", "32", str(image)], check=True, capture_output=True, env=ENV)
    local = work / "payload"
    for name, size in ((NAME, 6000), ("readme.txt", 300), ("photo.jpg", 200_000)):
        local.write_bytes(os.urandom(size))
        subprocess.run(["mcopy", "-i", str(image), str(local), f"::/{name}"], check=True, env=ENV)
    return image


async def agent_once(image: Path, runtime: Path) -> None:
    async with StickMedia(image, MediaSettings(), runtime_dir=runtime) as media:
        await media.fetch_archive()
        await media.write_back(b'{"status": "SUCCEEDED"}\n', b"log line\n")


def baseline_once(image: Path, work: Path) -> None:
    img = str(image)
    subprocess.run(["mdir", "-b", "-a", "-i", img, "::/"], check=True, capture_output=True, env=ENV)
    subprocess.run(
        ["mcopy", "-i", img, f"::/{NAME}", "-"], check=True, capture_output=True, env=ENV
    )
    subprocess.run(["mmd", "-i", img, "::/edge-agent"], capture_output=True, env=ENV, check=False)
    local = work / "r"
    local.write_bytes(b"x")
    for target in ("result.json", "provisioning.log"):
        subprocess.run(
            ["mcopy", "-o", "-i", img, str(local), f"::/edge-agent/{target}"],
            check=True,
            capture_output=True,
            env=ENV,
            stdin=subprocess.DEVNULL,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = make_stick(work)
        runtime = work / "run"
        runtime.mkdir(mode=0o700)
        agent_ms: list[float] = []
        base_ms: list[float] = []
        for _ in range(args.count):
            start = time.perf_counter()
            baseline_once(image, work)
            base_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            asyncio.run(agent_once(image, runtime))
            agent_ms.append((time.perf_counter() - start) * 1000)
    for label, values in (("baseline (bare mtools)", base_ms), ("StickMedia", agent_ms)):
        print(
            f"{label:24} p50 {statistics.median(values):7.2f} ms   "
            f"p95 {percentile(values, 0.95):7.2f} ms"
        )
    ratio = statistics.median(agent_ms) / statistics.median(base_ms)
    print(f"ratio StickMedia / baseline (p50): {ratio:.2f}")


if __name__ == "__main__":
    main()
