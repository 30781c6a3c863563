"""Test and benchmark support, shared by tests/ and bench/ (not installed): real processes, test clients, Xvfb."""
