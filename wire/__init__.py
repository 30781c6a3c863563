"""Wire formats shared by the acceptors, the router and the clients.

- ``wire.framing``: bytes to lines (length limit, CRLF, UTF-8) and text sanitizing.
- ``wire.commands``: client lines to frozen ``Command`` objects, declared once in a table.
- ``wire.replies``: server lines: formatting (server side) and parsing (client side).
- ``wire.bus``: the versioned acceptor-router frame layout, one encode and one decode.

Nothing here touches a socket or an event loop.
"""
