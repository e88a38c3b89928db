"""On-disk caches: embedding shards (resumable, checksummed) shared by every run with the same encoder."""

from medret.cache.shards import ShardStore, cache_key, cache_root, ensure_writable

__all__ = ["ShardStore", "cache_key", "cache_root", "ensure_writable"]
