"""Publishing hub versions and their dedup index."""
