"""Rollout: the asyncio scheduler, the staleness bound, grouping and episode failures."""
