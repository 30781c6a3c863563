"""The router: the single owner of user IDs, names, rooms, user lists and fan-out decisions."""
