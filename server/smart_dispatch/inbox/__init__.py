"""The in-app inbox: per-recipient item lists that `ListInbox` reads and `StreamInbox` follows.

`base.py` is the contract, `memory.py` the embedded store, `redis.py` the Redis-stream store.
"""
