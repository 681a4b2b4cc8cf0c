"""Reward functions (verifiers) shared by the envs."""
