"""The soak test's servers: each transport's real server, started once, stopped after."""
