"""The warm pool: ready, running instances of recently hit states, handed out on a cache hit.

See `warm_pool.WarmPool` for the lifecycle and docs/architecture.md ("Warm pool") for why.
"""
