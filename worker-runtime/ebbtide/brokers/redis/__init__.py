"""The Redis broker: every state change is one Lua script (lua/), so it is atomic and
one round trip. broker.py talks to Redis, wire.py frames arguments and replies (pure),
scripts.py loads the Lua sources."""
