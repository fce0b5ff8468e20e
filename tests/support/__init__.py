"""What the tests share: tiny models (models.py, one factory; families.py, every decoder family), apps under a
TestClient (clients.py), the real server in a subprocess (server.py), a client that leaves mid-request
(disconnect.py) and a few checks (checks.py). The fixtures built on them live in tests/conftest.py and
tests/browser/conftest.py."""
