"""Telebridge media plane: a selective forwarding unit built on aiortc.

The package is split in two layers (see ``sfu/README.md``):

* a sans-I/O core (``rtp``, ``rtcp``, ``codecs``, ``cache``, ``rewriter``,
  ``keyframes``, ``router``) that never touches a socket or a clock, and
* a thin I/O layer (``transport``, ``server``) on aiortc's ICE/DTLS/SRTP.
"""

__version__ = "0.1.0"
