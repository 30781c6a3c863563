"""PyChat clients: the shared client core (``clients.core``) and, later, the fronts on it."""
