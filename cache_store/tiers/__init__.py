"""Storage tiers behind one batch-first interface (see base.Tier)."""

from cache_store.tiers.base import Tier, TierStats
from cache_store.tiers.disk import DiskTier
from cache_store.tiers.memory import MemoryTier
from cache_store.tiers.redis_tier import RedisTier

__all__ = ["Tier", "TierStats", "MemoryTier", "DiskTier", "RedisTier"]
