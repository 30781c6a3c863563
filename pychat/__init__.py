"""PyChat: the ``pychat`` command (serve, router, acceptor) and what the processes share."""

__version__ = "0.1.0"
