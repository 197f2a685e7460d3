"""Eviction policies for capacity-bounded tiers: one small module per policy."""

from cache_store.eviction.base import EvictionPolicy
from cache_store.eviction.cost_aware import CostAwarePolicy
from cache_store.eviction.lru import LRUPolicy


def make_policy(name: str, **kwargs) -> EvictionPolicy:
    if name == "lru":
        return LRUPolicy()
    if name in ("cost", "cost-aware", "cost_aware"):
        return CostAwarePolicy(**kwargs)
    raise ValueError(f"unknown eviction policy {name!r}; use 'lru' or 'cost-aware'")


__all__ = ["EvictionPolicy", "LRUPolicy", "CostAwarePolicy", "make_policy"]
