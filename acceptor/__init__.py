"""The acceptor: owns client TCP sockets, speaks the line protocol, forwards commands to the
router over ZeroMQ and fans the router's room messages out to its own clients."""
