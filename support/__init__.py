"""Test and benchmark support, shared by tests/ and bench/ (not installed): real processes, a
test client, a fake router, Xvfb and the GUI driver."""
