"""Bringing ``lo`` up in the calling thread's netns: the one piece of
networking that making a set needs (re-exported by :mod:`nspool.net`)."""

from __future__ import annotations

import errno
import fcntl
import socket
import struct

from .errors import from_errno
from .kinds import Kind

__all__ = ["loopback_up"]

# <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, rest of the union


def loopback_up() -> None:
    """Bring ``lo`` up in the calling thread's netns (an ioctl, no
    subprocess). A fresh netns has ``lo`` down: nothing can connect to
    127.0.0.1 until it is up."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            raw = fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
            flags = _IFREQ.unpack(raw)[1]
            if not flags & IFF_UP:
                fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))
    except OSError as exc:
        raise from_errno(
            exc.errno or errno.EIO, syscall="ioctl(SIOCSIFFLAGS)", kind=Kind.NET, path="lo"
        ) from exc
